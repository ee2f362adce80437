"""How a moment is stored between steps.

The moments stage owns storage: it computes every moment in at least float32
and hands it to a ``Storage`` to keep until the next step. A storage is a small
frozen dataclass with two methods, applied leaf by leaf:

- ``encode(value, default_dtype, key)`` -> what the state holds for this leaf
  (an array, or a small pytree for quantised forms);
- ``decode(stored, dtype)`` -> the moment as an array of ``dtype``.

``default_dtype`` is the dtype the moment has when the user asked for nothing
(the parameter's dtype, real for the second moment). ``key`` is a PRNG key
derived from the step count, for storages that round stochastically.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class FloatStorage:
    """Keeps the moment as a plain array of ``dtype`` (default: like the parameter)."""

    dtype: Any = None
    needs_key = False

    def encode(self, value: jax.Array, default_dtype, key=None) -> jax.Array:
        return value.astype(self.dtype if self.dtype is not None else default_dtype)

    def decode(self, stored: jax.Array, dtype) -> jax.Array:
        return stored.astype(dtype)


def resolve_storage(spec: Any, name: str):
    """A storage object for a user's ``mu_dtype``/``nu_dtype`` argument."""
    if spec is None or isinstance(spec, FloatStorage):
        return spec if spec is not None else FloatStorage()
    try:
        dtype = jnp.dtype(spec)
    except TypeError:
        raise ValueError(f"{name}={spec!r} is invalid: it must be None or a JAX float dtype.") from None
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise ValueError(f"{name}={spec!r} is invalid: it must be None or a JAX float dtype.")
    return FloatStorage(dtype)
