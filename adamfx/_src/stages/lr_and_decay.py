"""Parameter-shaped stages: ``lr_decay`` and ``add_decayed_weights``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adamfx._src.core import checks
from adamfx._src.core import hyperparams as hp
from adamfx._src.core.base import Stage
from adamfx._src.core.numerics import compute_dtype, scalar_like

Schedule = Callable[[jax.Array], Any]


class LrDecayState(NamedTuple):
    count: jax.Array  # steps taken so far: t - 1 during step t
    learning_rate: jax.Array  # the learning rate the last step applied
    hyperparams: dict  # learning_rate (when a number), decay


@dataclasses.dataclass(frozen=True)
class LrDecay(Stage):
    learning_rate: float | Schedule
    decay: float

    def _rate(self, count, values):
        base = self.learning_rate(count) if callable(self.learning_rate) else values["learning_rate"]
        return jnp.asarray(base, dtype=values["decay"].dtype) / (1 + values["decay"] * count)

    def init(self, params):
        values = {"decay": self.decay}
        if not callable(self.learning_rate):
            values["learning_rate"] = self.learning_rate
        values = hp.as_arrays(**values)
        count = jnp.zeros([], jnp.int32)
        return LrDecayState(count, self._rate(count, values), values)

    def update(self, updates, state, params=None, **extra_args):
        rate = self._rate(state.count, state.hyperparams)

        def leaf(u):
            return (-scalar_like(rate, u) * u.astype(compute_dtype(u.dtype))).astype(u.dtype)

        count = optax.safe_increment(state.count)
        return jax.tree.map(leaf, updates), LrDecayState(count, rate, state.hyperparams)


def lr_decay(learning_rate: float | Schedule = 1e-3, decay: float = 0.0):
    """Scales updates by ``-lr_t`` with ``lr_t = schedule(t) / (1 + decay * t)``, t counted from 0.

    ``learning_rate`` is a number or any schedule ``count -> lr`` (optax
    schedules work). ``decay`` is the legacy Keras (tf.keras <= 2.10) inverse-time
    decay, applied on top of the schedule; the first step is undecayed.
    State: ``count``, the ``learning_rate`` applied at the last step, and the
    hyperparameters ``learning_rate`` (numbers only) and ``decay``.
    """
    return LrDecay(learning_rate, decay).transform()


class WeightDecayState(NamedTuple):
    hyperparams: dict  # weight_decay


class WeightDecayScheduleState(NamedTuple):
    count: jax.Array  # steps taken: the schedule is read at t - 1 during step t, as optax does
    hyperparams: dict  # none: a schedule is not a number in the state


@dataclasses.dataclass(frozen=True)
class AddDecayedWeights(Stage):
    weight_decay: float
    mask: Any  # frozen pytree of bools, a callable, or None

    def __post_init__(self):
        super().__post_init__()
        checks.check_mask("weight_decay_mask", self.mask)

    @property
    def elementwise(self) -> bool:  # a mask is a per-leaf decision
        return self.mask is None

    def _mask(self, params):
        if self.mask is None:
            return jax.tree.map(lambda _: True, params)
        return checks.resolve_mask(checks.thaw(self.mask), params, "weight_decay_mask")

    def init(self, params):
        self._mask(params)  # reject a mask that does not fit the params now, not mid-training
        if callable(self.weight_decay):
            return WeightDecayScheduleState(jnp.zeros([], jnp.int32), {})
        return WeightDecayState(hp.as_arrays(weight_decay=self.weight_decay))

    def update(self, updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("weight decay needs the params: call update(updates, state, params).")
        if callable(self.weight_decay):
            weight_decay = jnp.asarray(self.weight_decay(state.count), dtype=float)
            state = state._replace(count=optax.safe_increment(state.count))
        else:
            weight_decay = state.hyperparams["weight_decay"]

        def leaf(u, p, decayed):
            if isinstance(decayed, (bool, np.bool_)) and not decayed:
                return u
            new = u.astype(compute_dtype(u.dtype)) + scalar_like(weight_decay, p) * p
            return jnp.where(decayed, new, u).astype(u.dtype)

        return jax.tree.map(leaf, updates, params, self._mask(params)), state


def add_decayed_weights(weight_decay: float = 0.0, mask: Any = None):
    """Adds ``weight_decay * p`` to the updates (where ``mask`` is true).

    Its place in the chain decides its meaning:

    - before :func:`scale_by_moments`: coupled L2, ``g += wd p`` (``torch.optim.Adam``);
    - just before :func:`lr_decay`: decoupled, ``p -= lr_t wd p`` (AdamW: Loshchilov
      & Hutter, 2019; PyTorch ``AdamW``, Keras, optax ``adamw``).

    ``weight_decay`` is a number or a schedule ``count -> weight_decay`` (as in
    optax: read at the number of steps taken, from 0). ``mask`` is a pytree of
    bools shaped like the params, or a callable ``params -> mask``; a mask whose
    structure does not match raises ``ValueError`` at ``init``. State:
    hyperparameter ``weight_decay`` (a number), or the step ``count`` (a schedule).
    """
    return AddDecayedWeights(weight_decay, checks.freeze(mask)).transform()
