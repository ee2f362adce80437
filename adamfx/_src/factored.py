"""Factored second moment (``nu_dtype="factored"``), after Adafactor.

Shazeer & Stern, 2018, "Adafactor: Adaptive Learning Rates with Sublinear
Memory Cost" (ICML), Alg. 4: for a matrix-shaped leaf of shape ``(n, m)`` keep
only the row and column means of the second moment,

    r_t = b2 r_{t-1} + (1 - b2) mean_j(g_t^2)        (n values)
    c_t = b2 c_{t-1} + (1 - b2) mean_i(g_t^2)        (m values)
    v^_t = r_t c_t^T / mean_i(r_t)                   (the rank-1 estimate used in the update)

``n + m`` numbers instead of ``n m``. Leaves with more dimensions are treated as
stacks of matrices over their last two axes; vectors and scalars (and matrices
with a side shorter than ``min_dim_size``) keep the full moment. The state is
:class:`Factored` ``(row, col, full)``, three trees shaped like the parameters.

As a storage this is ``encode = (row means, column means)`` and ``decode = the
rank-1 estimate``. Because the means are linear and ``decode`` preserves them
(the row means of ``r c^T / mean(r)`` are ``r``, as ``mean(c) = mean(r)``),
``encode(b2 decode(s) + (1 - b2) g^2)`` is exactly Adafactor's update of ``r``
and ``c``. Unlike rounding storages, the moment handed to the next stage is the
estimate ``v^_t`` itself (``exact_moment = False``), as in Adafactor. Where
``mean(r) = 0`` (an all-zero moment) the estimate is 0; Adafactor adds
``eps1 = 1e-30`` to ``g^2`` for the same purpose.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from adamfx._src.storage import Storage
from adamfx._src.tree_math import placeholder


class Factored(NamedTuple):
    """Row and column means of a (stack of) matrix-shaped second moment(s), or the full moment.

    Fields a leaf does not use hold a placeholder of shape ``(1,)``; a factored
    leaf's ``col`` never has that shape (its last side is ``>= min_dim_size >= 2``).
    """

    row: jax.Array  # mean over the last axis: shape[:-1]
    col: jax.Array  # mean over the second-to-last axis: shape[:-2] + shape[-1:]
    full: jax.Array  # the whole moment, for leaves that are not factored


def factor(value: jax.Array) -> Factored:
    """Row and column means of ``value`` over its last two axes."""
    return Factored(value.mean(axis=-1), value.mean(axis=-2), placeholder())


def is_factored(stored: Factored) -> bool:
    return stored.col.shape != (1,)


def unfactor(stored: Factored) -> jax.Array:
    """The rank-1 estimate ``r c^T / mean(r)`` (0 where the moment is all zero)."""
    row, col, _ = stored
    mean = row.mean(axis=-1, keepdims=True)
    col = col / jnp.maximum(mean, jnp.finfo(mean.dtype).tiny)
    return row[..., :, None] * col[..., None, :]


@dataclasses.dataclass(frozen=True)
class FactoredStorage(Storage):
    """Keeps the second moment of matrix-shaped leaves as row and column means (Adafactor).

    Only for the second moment (``nu_dtype``): the estimate needs ``v >= 0``.
    Leaves with fewer than two dimensions, or whose last two dimensions are not
    both ``>= min_dim_size``, keep the full moment in the compute dtype.

    >>> import adamfx, jax.numpy as jnp
    >>> state = adamfx.adam(1e-3, nu_dtype="factored").init({"w": jnp.zeros((300, 200)), "b": jnp.zeros(200)})
    >>> nu = state[0].nu
    >>> nu.row["w"].shape, nu.col["w"].shape, nu.full["b"].shape
    ((300,), (200,), (200,))
    """

    min_dim_size: int = 2

    elementwise: ClassVar[bool] = False  # row and column means need the leaf's shape
    exact_moment: ClassVar[bool] = False  # the next stage sees the rank-1 estimate
    record: ClassVar[type] = Factored  # the state holds Factored(row tree, col tree, full tree)

    def __post_init__(self):
        if not isinstance(self.min_dim_size, int) or self.min_dim_size < 2:
            raise ValueError(f"min_dim_size={self.min_dim_size!r} is invalid: it must be an int >= 2.")

    def _factors(self, value: jax.Array) -> bool:
        return value.ndim >= 2 and min(value.shape[-2:]) >= self.min_dim_size

    def encode(self, value: jax.Array, *, default_dtype, key=None) -> Factored:
        return factor(value) if self._factors(value) else Factored(placeholder(), placeholder(), value)

    def zeros(self, value: jax.Array, *, default_dtype) -> Factored:
        """``encode`` of the all-zero ``value``."""
        if not self._factors(value):
            return Factored(placeholder(), placeholder(), value)
        shape = value.shape
        return Factored(
            jnp.zeros(shape[:-1], value.dtype), jnp.zeros(shape[:-2] + shape[-1:], value.dtype), placeholder()
        )

    def decode(self, stored: Factored, *, dtype) -> jax.Array:
        return (unfactor(stored) if is_factored(stored) else stored.full).astype(dtype)
