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
from jax import lax

from adamfx._src.core.numerics import abs_sq, placeholder
from adamfx._src.core.tracing import traced_once_per_shape
from adamfx._src.storage.protocol import Storage


class Factored(NamedTuple):
    """Row and column means of a (stack of) matrix-shaped second moment(s), or the full moment.

    Fields a leaf does not use hold a placeholder of shape ``(1,)``; a factored
    leaf's ``col`` never has that shape (its last side is ``>= min_dim_size >= 2``).
    """

    row: jax.Array  # mean over the last axis: shape[:-1]
    col: jax.Array  # mean over the second-to-last axis: shape[:-2] + shape[-1:]
    full: jax.Array  # the whole moment, for leaves that are not factored


def factor(value: jax.Array) -> Factored:
    """Row and column means of ``value`` over its last two axes (see :func:`_factor_overflowed` for ``inf``)."""
    row, col = value.mean(axis=-1), value.mean(axis=-2)
    overflowed = jnp.isinf(row)  # a row holding an infinite element (second moments are >= 0)
    row, col = lax.cond(overflowed.any(), _factor_overflowed, lambda v, r, c: (r, c), value, row, col)
    return Factored(row, col, placeholder())


def _factor_overflowed(value: jax.Array, row: jax.Array, col: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Factors of a moment with infinite elements (a finite gradient whose square overflowed).

    Float32 state keeps ``v = inf`` for such an element, and so a zero step, for
    ever, and nothing else changes. Here the rows and columns that hold one are
    *flagged* by the sign bit of their (non-negative) mean, and :func:`unfactor`
    returns ``inf`` where a flagged row meets a flagged column (the set ``S``) --
    for one overflowed element, exactly that element. The means themselves are
    over the finite estimate, with each entry of ``S`` filled by the rank-1
    estimate of the rest, ``f_kl = r~_k c~_l / Q`` (``r~``, ``c~``: the means over
    the unflagged columns, rows; ``Q``: the mean of the unflagged block), so the
    flagged rows and columns keep following Adafactor's averages.
    """
    del row
    flag_rows, flag_cols = jnp.isinf(value).any(axis=-1), jnp.isinf(col)
    in_s = flag_rows[..., :, None] & flag_cols[..., None, :]
    kept = jnp.where(in_s, 0, value)  # every infinite element is in S
    n_rows, n_cols = value.shape[-2], value.shape[-1]
    row_sum, col_sum = kept.sum(axis=-1), kept.sum(axis=-2)
    free_rows = (n_rows - flag_rows.sum(axis=-1, keepdims=True)).astype(value.dtype)
    free_cols = (n_cols - flag_cols.sum(axis=-1, keepdims=True)).astype(value.dtype)
    on_flags = lambda sums, flags: jnp.where(flags, sums, 0).sum(axis=-1, keepdims=True)
    block_sum = row_sum.sum(axis=-1, keepdims=True) - on_flags(row_sum, flag_rows) - on_flags(col_sum, flag_cols)
    safe = lambda x: jnp.maximum(x, jnp.finfo(value.dtype).tiny)
    row_est, col_est = row_sum / safe(free_cols), col_sum / safe(free_rows)  # r~ and c~
    q = block_sum / safe(free_rows * free_cols)
    fill = jnp.where(q > 0, 1 / safe(q), 0)
    row = (row_sum + jnp.where(flag_rows, row_est * on_flags(col_est, flag_cols) * fill, 0)) / n_cols
    col = (col_sum + jnp.where(flag_cols, col_est * on_flags(row_est, flag_rows) * fill, 0)) / n_rows
    return jnp.where(flag_rows, -row, row), jnp.where(flag_cols, -col, col)


def square_means(g: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Row and column means of ``|g|^2`` over the last two axes, each reduction reading ``g`` itself.

    Written plainly, XLA:CPU computes ``|g|^2`` once, writes it out and reads it
    back for each mean (measured 4x slower for a 4096 x 4096 leaf); the barrier
    between the two reductions keeps them apart, so each one squares ``g`` as it
    reads it.
    """
    rows = abs_sq(g).mean(axis=-1)
    g = lax.optimization_barrier(g)
    return rows, abs_sq(g).mean(axis=-2)


def accumulate_factors(stored: Factored, g: jax.Array, decay, weight, offset: jax.typing.ArrayLike = 0.0) -> Factored:
    """The factors of ``decay * unfactor(stored) + weight * (|g|^2 + offset)`` without forming that matrix.

    ``unfactor`` preserves the means (the row means of ``r c^T / mean(r)`` are
    ``r``), so the new row means are ``decay * r + weight * mean_j(|g|^2)`` --
    Adafactor's update -- and only ``g`` is reduced (:func:`square_means`). An
    infinite ``|g|^2`` (a finite gradient whose square overflowed) flags its row
    and column (see :func:`_factor_overflowed`) and adds the current estimate,
    not ``inf``, to their means, so they keep following the rest of the matrix.
    ``offset`` is Adafactor's ``eps1`` added to every ``|g|^2`` (the mean of
    ``|g|^2 + eps1`` is ``mean(|g|^2) + eps1``).
    """
    flag_rows, flag_cols = jnp.signbit(stored.row), jnp.signbit(stored.col)
    row, col = jnp.abs(stored.row), jnp.abs(stored.col)
    x_row, x_col = square_means(g)
    overflow_rows, overflow_cols = jnp.isinf(x_row), jnp.isinf(x_col)

    def finite_means(g, row, col):  # only when some |g|^2 is inf: one more pass, over g
        estimate = unfactor(Factored(row, col, placeholder()))
        x = abs_sq(g)
        filled = jnp.where(jnp.isinf(x), estimate, x)
        return filled.mean(axis=-1), filled.mean(axis=-2)

    x_row, x_col = lax.cond(overflow_rows.any(), finite_means, lambda g, r, c: (x_row, x_col), g, row, col)
    x_row, x_col = x_row + offset, x_col + offset
    row, col = decay * row + weight * x_row, decay * col + weight * x_col
    flag_rows, flag_cols = flag_rows | overflow_rows, flag_cols | overflow_cols
    return Factored(jnp.where(flag_rows, -row, row), jnp.where(flag_cols, -col, col), placeholder())


def is_factored(stored: Factored) -> bool:
    return stored.col.shape != (1,)


def unfactor(stored: Factored, floor=None) -> jax.Array:
    """The rank-1 estimate ``|r| |c|^T / max(mean|r|, floor)`` (``inf`` on flagged pairs).

    ``floor`` defaults to the dtype's smallest normal number, so an all-zero
    moment gives 0; PyTorch's Adafactor floors the mean at its ``eps1``.
    """
    row, col, _ = stored
    flag_rows, flag_cols = jnp.signbit(row), jnp.signbit(col)
    row, col = jnp.abs(row), jnp.abs(col)
    mean = row.mean(axis=-1, keepdims=True)
    floor = jnp.finfo(mean.dtype).tiny if floor is None else floor
    col = col / jnp.maximum(mean, floor)
    estimate = row[..., :, None] * col[..., None, :]
    return jnp.where(flag_rows[..., :, None] & flag_cols[..., None, :], jnp.inf, estimate)


def _accumulate_leaf(stored: Factored, g: jax.Array, decay, weight) -> tuple[jax.Array, Factored]:
    """The new factors of a factored leaf (:func:`accumulate_factors`) and the estimate they give."""
    kept = accumulate_factors(stored, g, decay, weight)
    return unfactor(kept).astype(g.real.dtype), kept


_accumulate = traced_once_per_shape(_accumulate_leaf)
_unfactor = traced_once_per_shape(unfactor)


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
    >>> tx, g = adamfx.scale_by_moments(None, 0.5, nu_dtype="factored"), {"w": jnp.array([[1.0, 2.0], [2.0, 4.0]])}
    >>> moments, state = tx.update(g, tx.init(g))  # v = 0.5 g^2 = [[0.5, 2], [2, 8]], of rank one
    >>> state.nu.row["w"], moments.nu["w"].round(5)  # row means; row col^T / mean(row) gives v back
    (Array([1.25, 5.  ], dtype=float32), Array([[0.5, 2. ],
           [2. , 8. ]], dtype=float32))
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

    def shape(self, stored: Factored) -> tuple[int, ...]:
        """The moment's shape: ``row`` holds ``shape[:-1]``, ``col`` ends with ``shape[-1]``."""
        return (*stored.row.shape, stored.col.shape[-1]) if is_factored(stored) else tuple(stored.full.shape)

    def decode(self, stored: Factored, *, dtype) -> jax.Array:
        return (_unfactor(stored) if is_factored(stored) else stored.full).astype(dtype)

    def accumulate(self, stored: Factored, g: jax.Array, *, power=1, decay, weight, default_dtype, key=None):
        """``new = decay * decode(stored) + weight * |g|^power`` -> ``(decode(encode(new)), encode(new))``.

        For a factored leaf (``power=2``) the factors come from :func:`accumulate_factors`
        (only ``g`` is reduced, ``new`` is never formed); other leaves keep ``new``.
        """
        if not is_factored(stored) or power != 2:
            return super().accumulate(
                stored, g, power=power, decay=decay, weight=weight, default_dtype=default_dtype, key=key
            )
        return _accumulate(stored, g, decay, weight)
