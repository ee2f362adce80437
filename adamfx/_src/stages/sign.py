"""Sign updates: Lion's interpolated momentum (Chen et al., 2023) and ``sign``.

Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms", Program 1) keeps one moment and
steps along the sign of an interpolation between it and the gradient::

    c_t = b1 m_{t-1} + (1 - b1) g_t        lion_momentum (emitted)
    m_t = b2 m_{t-1} + (1 - b2) g_t        lion_momentum (kept)
    u_t = sign(c_t)                        sign

Every component of ``u_t`` is -1, 0 or 1 (``c / |c|`` for complex), whatever the storage of ``m``: that is
why Lion's single moment survives bfloat16 and int8 storage.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adamfx._src.core import checks
from adamfx._src.core import hyperparams as hp
from adamfx._src.core.base import Stage, Stateless
from adamfx._src.core.numerics import compute_dtype, increment, moment_dtype, scalar_like
from adamfx._src.storage.protocol import (
    Storage,
    default_dtype_of,
    init_stored,
    map_stored,
    parameter_shaped,
    resolve_storage,
    stream_of,
)


class LionMomentumState(NamedTuple):
    count: jax.Array  # steps taken (seeds the stochastic rounding of a narrow mu)
    mu: Any  # stored momentum m
    hyperparams: dict  # 1-b1, 1-b2 (complements, as scale_by_moments keeps them)


@dataclasses.dataclass(frozen=True)
class LionMomentum(Stage):
    b1: float
    b2: float
    storage: Storage

    def init(self, params):
        return LionMomentumState(
            count=jnp.zeros([], jnp.int32),
            mu=init_stored(self.storage, params, moment_dtype),
            hyperparams=hp.as_arrays(**hp.complements(b1=self.b1, b2=self.b2)),
        )

    def update(self, updates, state, params=None, **extra_args):
        updates = checks.conform(updates, self.storage, parameter_shaped(self.storage, state.mu), "gradients")
        c1, c2 = state.hyperparams[hp.COMPLEMENT + "b1"], state.hyperparams[hp.COMPLEMENT + "b2"]
        count = increment(state.count)

        def leaf(record, key, g):
            x = g.astype(compute_dtype(g.dtype))
            w1, w2 = scalar_like(c1, x), scalar_like(c2, x)
            m = self.storage.decode(record, dtype=x.dtype)
            c = (1 - w1) * m + w1 * x  # c_t = b1 m_{t-1} + (1 - b1) g_t
            default = default_dtype_of(x, g)
            _, kept = self.storage.accumulate(record, x, decay=1 - w2, weight=w2, default_dtype=default, key=key)
            return c, kept  # m_t = b2 m_{t-1} + (1 - b2) g_t

        c, kept = map_stored(self.storage, leaf, state.mu, updates, count=count, stream=stream_of(self, "mu"))
        return c, LionMomentumState(count, kept, state.hyperparams)


def lion_momentum(b1: float = 0.9, b2: float = 0.99, *, mu_dtype=None):
    """Lion's momentum: emits ``c_t = b1 m_{t-1} + (1 - b1) g_t`` and keeps ``m_t = b2 m_{t-1} + (1 - b2) g_t``.

    ``m`` is stored as ``mu_dtype`` (a float dtype, rounded stochastically when narrower; ``"int8"``; a
    :class:`adamfx.Storage`), computed in at least float32. State: ``count``, ``mu``, hyperparameters
    ``b1``, ``b2``. Used by :func:`adamfx.lion` (followed by :func:`sign`).

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.lion_momentum(0.5, 0.75)
    >>> c, state = tx.update({"w": jnp.array([4.0])}, tx.init({"w": jnp.zeros(1)}))
    >>> c["w"], state.mu["w"]  # c = (1 - 0.5) 4 emitted, m = (1 - 0.75) 4 kept
    (Array([2.], dtype=float32), Array([1.], dtype=float32))
    """
    return LionMomentum(b1, b2, resolve_storage(mu_dtype, "mu_dtype")).transform()


@dataclasses.dataclass(frozen=True)
class Sign(Stateless):
    def update(self, updates, state, params=None, **extra_args):
        return jax.tree.map(jnp.sign, updates), state  # -1, 0, +1 (c / |c| for complex)


def sign():
    """``u <- sign(u)`` elementwise (0 stays 0; ``u / |u|`` for complex). No state. Used by :func:`adamfx.lion`.

    >>> import adamfx, jax.numpy as jnp
    >>> adamfx.sign().update({"w": jnp.array([-2.0, 0.0, 3.0])}, adamfx.sign().init(None))[0]["w"]
    Array([-1.,  0.,  1.], dtype=float32)
    """
    return Sign().transform()
