"""The few per-leaf numeric helpers the stages share (everything else is ``jax.tree.map``)."""

from __future__ import annotations

from typing import Any, cast

import jax
import jax.numpy as jnp
import optax


def compute_dtype(dtype) -> jnp.dtype:
    """The dtype the update maths runs in: at least float32 (bf16/f16 are promoted)."""
    return jnp.promote_types(dtype, jnp.float32)


def real_dtype(dtype) -> jnp.dtype:
    """``float32`` for ``complex64``, the dtype itself for real dtypes."""
    return jnp.finfo(dtype).dtype


def moment_dtype(dtype) -> jnp.dtype:
    """The dtype a moment is kept in by default: the parameter's, but float32 for float16.

    float16's range cannot hold the moments of ordinary gradients: ``g^2`` of
    ``|g| < 2.4e-4`` is below its smallest normal (6.1e-5), and at ``|g| = 1e-3``
    Adam's step comes out 13x too large. bfloat16 has float32's range and is kept.
    """
    return jnp.dtype(jnp.float32) if jnp.dtype(dtype) == jnp.float16 else jnp.dtype(dtype)


def real_moment_dtype(dtype) -> jnp.dtype:
    """:func:`moment_dtype` of the real dtype (the second moment of a complex parameter is real)."""
    return moment_dtype(real_dtype(dtype))


def dtype_of_kind(spec: Any, kind: Any) -> jnp.dtype | None:
    """``jnp.dtype(spec)`` if ``spec`` names a dtype of ``kind`` (``jnp.floating``, ``jnp.inexact``), else ``None``."""
    try:
        dtype = jnp.dtype(spec)
    except TypeError:
        return None
    return dtype if jnp.issubdtype(dtype, kind) else None


def abs_sq(x: jax.Array) -> jax.Array:
    """``|x|**2``, real also for complex ``x``."""
    return (x * jnp.conj(x)).real if jnp.iscomplexobj(x) else x * x


def scalar_like(value: jax.typing.ArrayLike, x: jax.Array) -> jax.Array:
    """A hyperparameter array cast to the real dtype of ``x`` (never promotes ``x``)."""
    return jnp.asarray(value).astype(real_dtype(x.dtype))


def safe_divide(m: jax.Array, denominator: jax.Array) -> jax.Array:
    """``m / denominator``, but 0 where both are 0 (a zero gradient with ``eps = 0``).

    PyTorch and optax give NaN there (0 / 0), which then spreads into the params;
    a zero gradient asks for no step. Everywhere else the result is the plain
    quotient, bit for bit. The denominator is replaced *before* dividing, so
    the derivative stays finite too (differentiating through ``sqrt(v)`` at
    ``v = 0`` still needs ``eps_root > 0``).
    """
    return m / jnp.where((m == 0) & (denominator == 0), jnp.ones_like(denominator), denominator)


def increment(count: jax.Array) -> jax.Array:
    """``count + 1``, saturating at the int32 maximum (``optax.safe_increment``, typed as the array it returns)."""
    return cast(jax.Array, optax.safe_increment(count))


def placeholder() -> jax.Array:
    """Fills a state field that a leaf does not use (size 1: checkpointers reject empty arrays)."""
    return jnp.zeros((1,), jnp.float32)
