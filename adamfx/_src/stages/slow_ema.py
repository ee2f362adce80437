"""AdEMAMix's slow EMA (Pagliardini et al., 2025, "The AdEMAMix Optimizer: Better, Faster, Older", Alg. 1).

A second, slow exponential moving average of the gradient is mixed into Adam's
(bias-corrected) first moment before the normalization::

    m2_t = b3_t m2_{t-1} + (1 - b3_t) g_t              (no bias correction)
    m^_t <- m^_t + alpha_t m2_t

with the paper's warmup schedulers, read at a step index ``s`` (the peers differ: see
:func:`adamfx.ademamix`)::

    alpha_t = alpha min(s / T_alpha, 1)
    b3_t    = min(exp(ln b1 ln b3 / ((1 - s/T_b3) ln b3 + (s/T_b3) ln b1)), b3)

The b3 scheduler interpolates the half-life ``ln(1/2) / ln(b)`` linearly from b1's to b3's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adamfx._src.core import hyperparams as hp
from adamfx._src.core.base import Stage
from adamfx._src.core.numerics import compute_dtype, moment_dtype, scalar_like
from adamfx._src.stages.moments import require_moments
from adamfx._src.storage.protocol import (
    Storage,
    default_dtype_of,
    init_stored,
    map_stored,
    resolve_storage,
    stream_of,
)


class SlowEmaState(NamedTuple):
    m2: Any  # stored slow EMA of the gradient
    hyperparams: dict  # 1-b3, alpha, alpha_warmup, b3_warmup (the warmups when on)


def alpha_at(alpha: jax.Array, s: jax.Array, warmup: jax.Array | None) -> jax.Array:
    """The paper's alpha scheduler: ``alpha min(s / T, 1)`` (``alpha`` without a warmup)."""
    return alpha if warmup is None else alpha * jnp.minimum(s / warmup, 1.0)


def one_minus_b3_at(one_minus_b1, one_minus_b3, s: jax.Array, warmup: jax.Array | None) -> jax.Array:
    """``1 - b3_t`` for the paper's b3 scheduler, from the complements (accurate for b3 near 1).

    ``ln b3_t = min(ln b1 ln b3 / ((1 - a) ln b3 + a ln b1), ln b3)`` with ``a = s / T``: b1 at s = 0, b3 from s = T.
    """
    if warmup is None:
        return one_minus_b3
    log_b1, log_b3 = jnp.log1p(-one_minus_b1), jnp.log1p(-one_minus_b3)
    a = s / warmup
    log_b3_t = jnp.minimum(log_b1 * log_b3 / ((1 - a) * log_b3 + a * log_b1), log_b3)
    return -jnp.expm1(jnp.where(a < 1, log_b3_t, log_b3))


@dataclasses.dataclass(frozen=True)
class SlowEma(Stage):
    b3: float
    alpha: float
    alpha_warmup: float | None
    b3_warmup: float | None
    storage: Storage
    first_index: int  # the warmup index s of the first step: 0 (optax's schedules read the count) or 1

    def init(self, params):
        warmups = {"alpha_warmup": self.alpha_warmup, "b3_warmup": self.b3_warmup}
        values = {"alpha": self.alpha, **{name: value for name, value in warmups.items() if value is not None}}
        return SlowEmaState(
            m2=init_stored(self.storage, params, moment_dtype),
            hyperparams=hp.as_arrays(**hp.complements(b3=self.b3), **values),
        )

    def update(self, moments, state, params=None, **extra_args):
        moments = require_moments(moments, "slow_ema")
        values = state.hyperparams
        s = (moments.count - 1 + self.first_index).astype(values["alpha"].dtype)
        alpha = alpha_at(values["alpha"], s, values.get("alpha_warmup"))
        c3 = one_minus_b3_at(moments.one_minus_b1, values[hp.COMPLEMENT + "b3"], s, values.get("b3_warmup"))
        g = jax.tree.map(lambda g: g.astype(compute_dtype(g.dtype)), moments.grad)

        def leaf(record, key, g, like):  # m2_t = b3_t m2_{t-1} + (1 - b3_t) g_t
            c = scalar_like(c3, g)
            default = default_dtype_of(g, like)
            return self.storage.accumulate(record, g, decay=1 - c, weight=c, default_dtype=default, key=key)

        count, stream = moments.count, stream_of(self, "m2")
        m2, kept = map_stored(self.storage, leaf, state.m2, g, moments.grad, count=count, stream=stream)
        mu = jax.tree.map(lambda m, m2: m + scalar_like(alpha, m2) * m2, moments.mu, m2)  # m^_t + alpha_t m2_t
        return moments._replace(mu=mu), SlowEmaState(kept, values)


def slow_ema(
    b3: float = 0.9999,
    alpha: float = 5.0,
    *,
    alpha_warmup: float | None = None,
    b3_warmup: float | None = None,
    first_index: int = 0,
    mu_dtype: Any = None,
):
    """AdEMAMix's slow EMA ``m2_t = b3_t m2_{t-1} + (1 - b3_t) g_t``, mixed in: ``m^_t <- m^_t + alpha_t m2_t``.

    Place it after :func:`bias_correction` (the slow EMA is not corrected) and
    before :func:`normalize`. ``alpha_warmup`` / ``b3_warmup`` (a number of
    steps ``T``; ``None``: none) turn on the paper's schedulers (module
    docstring), read at ``s = t - 1 + first_index`` for step ``t = 1, 2, ...``;
    the b3 scheduler starts from ``b1``, which it reads from the :class:`Moments`.
    State: ``m2`` (stored as ``mu_dtype``), hyperparameters ``b3``, ``alpha``,
    ``alpha_warmup``, ``b3_warmup``. Used by :func:`adamfx.ademamix`.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.chain(adamfx.scale_by_moments(0.5, 0.5), adamfx.bias_correction(), adamfx.slow_ema(0.5, 2.0))
    >>> tx.update({"w": jnp.array([2.0])}, tx.init({"w": jnp.zeros(1)}))[0].mu["w"]  # m^ = 2, m2 = 0.5 * 2: 2 + 2 m2
    Array([4.], dtype=float32)
    """
    storage = resolve_storage(mu_dtype, "mu_dtype")
    return SlowEma(b3, alpha, alpha_warmup, b3_warmup, storage, int(first_index)).transform()
