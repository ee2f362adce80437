"""The learning rate: ``lr_decay`` scales the updates by ``-lr_t``, ``lr_t = schedule(t) / (1 + decay t)``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from optax import ScalarOrSchedule

from adamfx._src.core import hyperparams as hp
from adamfx._src.core.base import GradientTransformation, Stage
from adamfx._src.core.numerics import compute_dtype, increment
from adamfx._src.stages.step_scalars import per_dtype

Schedule = Callable[[jax.Array], Any]


class LrDecayState(NamedTuple):
    count: jax.Array  # steps taken so far: t - 1 during step t
    learning_rate: jax.Array  # the learning rate the last step applied
    hyperparams: dict  # learning_rate (when a number), decay


@dataclasses.dataclass(frozen=True)
class LrDecay(Stage):
    learning_rate: ScalarOrSchedule
    decay: float

    def _rate(self, count, values):
        base = self.learning_rate(count) if callable(self.learning_rate) else values["learning_rate"]
        return jnp.asarray(base, dtype=values["decay"].dtype) / (1 + values["decay"] * count)

    def init(self, params):
        values: dict[str, Any] = {"decay": self.decay}
        if not callable(self.learning_rate):
            values["learning_rate"] = self.learning_rate
        values = hp.as_arrays(**values)
        count = jnp.zeros([], jnp.int32)
        return LrDecayState(count, self._rate(count, values), values)

    def update(self, updates, state, params=None, **extra_args):
        rate = self._rate(state.count, state.hyperparams)
        # -lr_t once per step. (With the sign inside the division instead, XLA:CPU contracted other
        # multiply-adds to FMAs in the per-leaf and the fused loops: fused SGD lost bit-parity.)
        minus_rate = per_dtype(lambda dtype: -jnp.asarray(rate).astype(dtype), updates)

        def leaf(u):
            return (minus_rate(u.dtype) * u.astype(compute_dtype(u.dtype))).astype(u.dtype)

        count = increment(state.count)
        return jax.tree.map(leaf, updates), LrDecayState(count, rate, state.hyperparams)


def lr_decay(learning_rate: ScalarOrSchedule = 1e-3, decay: float = 0.0) -> GradientTransformation:
    """Scales updates by ``-lr_t`` with ``lr_t = schedule(t) / (1 + decay * t)``, t counted from 0.

    ``learning_rate`` is a number or any schedule ``count -> lr`` (optax
    schedules work). ``decay`` is the legacy Keras (tf.keras <= 2.10) inverse-time
    decay, applied on top of the schedule; the first step is undecayed.
    State: ``count``, the ``learning_rate`` applied at the last step, and the
    hyperparameters ``learning_rate`` (numbers only) and ``decay``.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.lr_decay(0.5, decay=1.0)
    >>> u, state = tx.update({"w": jnp.array([2.0])}, tx.init(None))
    >>> u["w"], tx.update({"w": jnp.array([2.0])}, state)[0]["w"]  # -0.5 g, then -0.5 g / (1 + 1)
    (Array([-1.], dtype=float32), Array([-0.5], dtype=float32))
    """
    return LrDecay(learning_rate, decay).transform()
