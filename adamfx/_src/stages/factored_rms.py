"""Adafactor's second moment: ``scale_by_factored_rms``.

Shazeer & Stern, 2018, "Adafactor: Adaptive Learning Rates with Sublinear
Memory Cost" (ICML), Alg. 4 (matrices) and 5 (vectors). With the decay-rate
schedule ``b2_t = 1 - t^(-decay_rate)`` (``b2_1 = 0``: the first step keeps
``|g_1|^2`` itself) and ``x_t = |g_t|^2 + eps1``::

    r_t = b2_t r_{t-1} + (1 - b2_t) mean_j(x_t)      (row means)
    c_t = b2_t c_{t-1} + (1 - b2_t) mean_i(x_t)      (column means)
    v^_t = r_t c_t^T / mean_i(r_t)                   (a matrix leaf)
    v^_t = b2_t v^_{t-1} + (1 - b2_t) x_t            (a leaf kept whole)
    u_t = g_t / sqrt(v^_t)

The row and column statistics are those of the factored storage
(:mod:`adamfx._src.storage.factored`): this stage only adds the schedule and
the two places ``eps1`` can take (``eps_placement``, extending the vocabulary of
:mod:`adamfx._src.stages.eps`):

- ``"in_square"`` (the paper, optax, Keras): ``eps1`` is added to each ``|g|^2``
  as above (for a leaf kept whole that is ``"inside"``, ``sqrt(v^ + eps1)``, as
  the weights sum to 1; for a factored one it is not);
- ``"clamp"`` (PyTorch): ``x_t = |g_t|^2``, the mean of ``r`` is floored at
  ``eps1`` and ``u_t = g_t / max(sqrt(v^_t), eps1)``.

Which leaves are factored is the storage's rule (its ``min_dim_size``).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from adamfx._src.core import checks
from adamfx._src.core import hyperparams as hp
from adamfx._src.core.base import GradientTransformation, Stage
from adamfx._src.core.numerics import abs_sq, compute_dtype, increment, real_moment_dtype, scalar_like
from adamfx._src.stages import eps as eps_vocabulary
from adamfx._src.storage.factored import Factored, FactoredStorage, accumulate_factors, is_factored, unfactor
from adamfx._src.storage.protocol import init_stored, map_stored, parameter_shaped, stream_of

EPS_PLACEMENTS = ("in_square", "clamp")


class FactoredRmsState(NamedTuple):
    count: jax.Array  # steps taken, saturating at int32 max
    nu: Factored  # row, column and full second moments (see FactoredStorage)
    hyperparams: dict  # decay_rate, eps (when a number)


def decay_schedule(decay_rate: jax.Array, t: jax.Array) -> jax.Array:
    """``1 - b2_t = t^(-decay_rate)``, the weight of this step's ``|g_t|^2`` (``t`` from 1)."""
    return jnp.power(t.astype(decay_rate.dtype), -decay_rate)


@dataclasses.dataclass(frozen=True)
class ScaleByFactoredRms(Stage):
    decay_rate: float
    eps: float | None  # None: the leaf dtype's machine epsilon (PyTorch's default eps1)
    eps_placement: str
    storage: FactoredStorage

    @property
    def elementwise(self) -> bool:  # row and column means need the leaf's shape
        return False

    def __post_init__(self):
        super().__post_init__()
        eps_vocabulary.check_placement(self.eps_placement, EPS_PLACEMENTS)

    def hyperparameters(self):
        values = {"decay_rate": self.decay_rate}
        return values if self.eps is None else {**values, "eps": self.eps}

    def init(self, params):
        return FactoredRmsState(
            count=jnp.zeros([], jnp.int32),
            nu=init_stored(self.storage, params, real_moment_dtype),
            hyperparams=hp.as_arrays(**self.hyperparameters()),
        )

    def update(self, grads, state, params=None, **extra_args):
        grads = checks.conform(grads, self.storage, parameter_shaped(self.storage, state.nu), "gradients")
        count = increment(state.count)
        weight = decay_schedule(state.hyperparams["decay_rate"], count)  # 1 - b2_t
        clamped = self.eps_placement == "clamp"

        def leaf(record, key, g):
            x = g.astype(compute_dtype(g.dtype))
            w = scalar_like(weight, x.real)
            eps1 = jnp.finfo(x.dtype).eps if self.eps is None else scalar_like(state.hyperparams["eps"], x.real)
            offset = 0.0 if clamped else eps1
            if is_factored(record):
                record = accumulate_factors(record, x, 1 - w, w, offset)
                v = unfactor(record, floor=eps1 if clamped else None)
            else:  # v_t = b2_t v_{t-1} + (1 - b2_t) (|g_t|^2 + offset)
                v = (1 - w) * record.full + w * (abs_sq(x) + offset)
                record = record._replace(full=v.astype(record.full.dtype))
            root = jnp.maximum(jnp.sqrt(v), eps1) if clamped else jnp.sqrt(v)
            return (x / root).astype(g.dtype), record

        updates, nu = map_stored(self.storage, leaf, state.nu, grads, count=count, stream=stream_of(self, "nu"))
        return updates, FactoredRmsState(count, nu, state.hyperparams)


def scale_by_factored_rms(
    decay_rate: float = 0.8, eps: float | None = 1e-30, *, eps_placement: str = "in_square", min_dim_size: int = 2
) -> GradientTransformation:
    """Scales the gradient by Adafactor's factored second moment: ``u_t = g_t / sqrt(v^_t)`` (see the module).

    ``b2_t = 1 - t^(-decay_rate)``; ``eps`` is ``eps1`` (``None``: the leaf
    dtype's machine epsilon, PyTorch's default), placed as ``eps_placement`` says
    (``"in_square"``: added to ``|g|^2``, or ``"clamp"``: floors, PyTorch). Leaves of
    two or more dimensions whose last two sides are ``>= min_dim_size`` keep row
    and column means (:class:`adamfx.FactoredStorage`); the others the full
    moment. State: ``count``, ``nu`` (a :class:`adamfx.Factored`), hyperparameters
    ``decay_rate`` and ``eps``.

    >>> import adamfx, jax.numpy as jnp
    >>> tx, g = adamfx.scale_by_factored_rms(eps=0.0), {"w": jnp.array([[1.0, -2.0], [2.0, -4.0]])}
    >>> tx.update(g, tx.init(g))[0]["w"].round(5)  # |g|^2 is rank one: its factored form is exact, u = g / |g|
    Array([[ 1., -1.],
           [ 1., -1.]], dtype=float32)
    """
    return ScaleByFactoredRms(decay_rate, eps, eps_placement, FactoredStorage(min_dim_size)).transform()
