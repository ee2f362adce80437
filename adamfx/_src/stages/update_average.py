"""A moving average of the updates: ``ema_of_updates`` (Adafactor's optional momentum).

    m_t = b m_{t-1} + (1 - b) u_t,   m_0 = 0,   out = m_t      (no bias correction)

optax's ``adafactor(momentum=b)`` (``optax.ema(b, debias=False)``) places it after
the step size, so the buffer holds scaled steps. The buffer is kept through the
:class:`adamfx.Storage` protocol (``mu_dtype``: bf16, int8, ...).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adamfx._src.core import checks
from adamfx._src.core import hyperparams as hp
from adamfx._src.core.base import GradientTransformation, Stage
from adamfx._src.core.numerics import compute_dtype, increment, moment_dtype, scalar_like
from adamfx._src.storage.protocol import Storage, init_stored, map_stored, parameter_shaped, resolve_storage, stream_of


class UpdateEmaState(NamedTuple):
    count: jax.Array  # steps taken (for the storage's random words)
    mu: Any  # stored average
    hyperparams: dict  # momentum


@dataclasses.dataclass(frozen=True)
class UpdateEma(Stage):
    momentum: float
    storage: Storage

    def init(self, params):
        return UpdateEmaState(
            jnp.zeros([], jnp.int32),
            init_stored(self.storage, params, moment_dtype),
            hp.as_arrays(momentum=self.momentum),
        )

    def update(self, updates, state, params=None, **extra_args):
        updates = checks.conform(updates, self.storage, parameter_shaped(self.storage, state.mu), "updates")
        count = increment(state.count)

        def leaf(record, key, u):  # m_t = b m_{t-1} + (1 - b) u_t
            x = u.astype(compute_dtype(u.dtype))
            b = scalar_like(state.hyperparams["momentum"], x.real)
            m, kept = self.storage.accumulate(record, x, decay=b, weight=1 - b, default_dtype=u.dtype, key=key)
            return m.astype(u.dtype), kept

        out, mu = map_stored(self.storage, leaf, state.mu, updates, count=count, stream=stream_of(self, "mu"))
        return out, UpdateEmaState(count, mu, state.hyperparams)


def ema_of_updates(momentum: float = 0.9, *, mu_dtype: Any = None) -> GradientTransformation:
    """``m_t = momentum m_{t-1} + (1 - momentum) u_t`` from ``m_0 = 0``, emitted as is (no bias correction).

    State: ``count``, ``mu`` (stored as ``mu_dtype``, default the parameter dtype),
    hyperparameter ``momentum``.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.ema_of_updates(0.5)
    >>> m, state = tx.update({"w": jnp.array([2.0])}, tx.init({"w": jnp.zeros(1)}))
    >>> m["w"], tx.update({"w": jnp.array([2.0])}, state)[0]["w"]  # 0.5 * 2, then 0.5 * 1 + 0.5 * 2
    (Array([1.], dtype=float32), Array([1.5], dtype=float32))
    """
    return UpdateEma(momentum, resolve_storage(mu_dtype, "mu_dtype")).transform()
