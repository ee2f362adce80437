"""Weight decay: ``add_decayed_weights`` (coupled L2 or decoupled, by its place in the chain) and
``decoupled_weight_decay`` (a decoupled decay that bypasses a momentum buffer holding the learning rate)."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from optax import ScalarOrSchedule

from adamfx._src.core import frozen
from adamfx._src.core import hyperparams as hp
from adamfx._src.core.base import GradientTransformation, Stage, require_stage
from adamfx._src.core.numerics import compute_dtype, increment, scalar_like
from adamfx._src.stages.learning_rate import lr_decay


class WeightDecayState(NamedTuple):
    hyperparams: dict  # weight_decay


class WeightDecayScheduleState(NamedTuple):
    count: jax.Array  # steps taken: the schedule is read at t - 1 during step t, as optax does
    hyperparams: dict  # none: a schedule is not a number in the state


@dataclasses.dataclass(frozen=True)
class AddDecayedWeights(Stage):
    weight_decay: ScalarOrSchedule
    mask: Any  # frozen pytree of bools, a callable, or None

    def __post_init__(self):
        super().__post_init__()
        frozen.check_mask("weight_decay_mask", self.mask)

    @property
    def elementwise(self) -> bool:  # a mask is a per-leaf decision
        return self.mask is None

    def _mask(self, params):
        if self.mask is None:
            return jax.tree.map(lambda _: True, params)
        return frozen.resolve_mask(frozen.thaw(self.mask), params, "weight_decay_mask")

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
            state = state._replace(count=increment(state.count))
        else:
            weight_decay = state.hyperparams["weight_decay"]

        def leaf(u, p, decayed):
            static = isinstance(decayed, (bool, np.bool_))  # a Python mask: no select in the step
            if static and not decayed:
                return u
            new = u.astype(compute_dtype(u.dtype)) + scalar_like(weight_decay, p) * p
            return (new if static else jnp.where(decayed, new, u)).astype(u.dtype)

        return jax.tree.map(leaf, updates, params, self._mask(params)), state


def add_decayed_weights(weight_decay: ScalarOrSchedule = 0.0, mask: Any = None) -> GradientTransformation:
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

    >>> import adamfx, jax.numpy as jnp
    >>> tx, p = adamfx.add_decayed_weights(0.1), {"w": jnp.array([1.0, -2.0])}
    >>> tx.update({"w": jnp.ones(2)}, tx.init(p), p)[0]["w"]  # u + 0.1 p
    Array([1.1, 0.8], dtype=float32)
    """
    return AddDecayedWeights(weight_decay, frozen.freeze(mask)).transform()


@dataclasses.dataclass(frozen=True)
class DecoupledWeightDecay(Stage):
    decayed_weights: Stage  # add_decayed_weights: wd * p
    rate: Stage  # lr_decay: times -lr_t

    @property
    def elementwise(self) -> bool:
        return self.decayed_weights.elementwise

    def init(self, params):
        return (self.decayed_weights.init(params), self.rate.init(params))

    def update(self, updates, state, params=None, **extra_args):
        zeros = jax.tree.map(jnp.zeros_like, updates)
        term, weights_state = self.decayed_weights.checked_update(zeros, state[0], params)
        term, rate_state = self.rate.checked_update(term, state[1], params)
        return jax.tree.map(jnp.add, updates, term), (weights_state, rate_state)


def decoupled_weight_decay(
    weight_decay: ScalarOrSchedule, learning_rate: ScalarOrSchedule = 1e-3, decay: float = 0.0, mask: Any = None
) -> GradientTransformation:
    """Adds ``-lr_t weight_decay p`` to the updates, with its own copy of the learning rate.

    Keras applies ``p -= lr_t wd p`` before every optimizer step; in a chain whose
    learning rate is already inside a momentum buffer (Keras ``SGD`` and
    ``RMSprop``) that term must bypass the buffer, so this stage scales it by
    the same ``lr_t`` (schedule and legacy ``decay``) itself. Its state holds
    the states of :func:`add_decayed_weights` and :func:`lr_decay`, so
    ``set_hyperparams(learning_rate=...)`` changes both copies together.

    >>> import adamfx, jax.numpy as jnp
    >>> tx, p = adamfx.decoupled_weight_decay(0.5, learning_rate=0.1), {"w": jnp.array([2.0, -4.0])}
    >>> tx.update({"w": jnp.ones(2)}, tx.init(p), p)[0]["w"]  # u - 0.1 * 0.5 p
    Array([0.9, 1.2], dtype=float32)
    """
    return DecoupledWeightDecay(
        require_stage(add_decayed_weights(weight_decay, mask)), require_stage(lr_decay(learning_rate, decay))
    ).transform()
