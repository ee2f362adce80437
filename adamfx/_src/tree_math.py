"""The few per-leaf numeric helpers the stages share (everything else is ``jax.tree.map``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def compute_dtype(dtype) -> jnp.dtype:
    """The dtype the update maths runs in: at least float32 (bf16/f16 are promoted)."""
    return jnp.promote_types(dtype, jnp.float32)


def real_dtype(dtype) -> jnp.dtype:
    """``float32`` for ``complex64``, the dtype itself for real dtypes."""
    return jnp.finfo(dtype).dtype


def abs_sq(x: jax.Array) -> jax.Array:
    """``|x|**2``, real also for complex ``x``."""
    return (x * jnp.conj(x)).real if jnp.iscomplexobj(x) else x * x


def scalar_like(value: jax.Array, x: jax.Array) -> jax.Array:
    """A hyperparameter array cast to the real dtype of ``x`` (never promotes ``x``)."""
    return jnp.asarray(value).astype(real_dtype(x.dtype))


def placeholder() -> jax.Array:
    """Fills a state field that a leaf does not use (size 1: checkpointers reject empty arrays)."""
    return jnp.zeros((1,), jnp.float32)
