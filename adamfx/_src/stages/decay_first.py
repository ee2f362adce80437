"""Keras's order of weight decay: ``decay_first``.

Keras applies ``p <- p - lr_t wd p`` to the variables *before* the optimizer
step (``BaseOptimizer.apply``), so a step that reads the parameters (Adafactor's
parameter scale ``RMS(p)``) sees the decayed ones:

    p'  = p_{t-1} - lr_t wd p_{t-1}
    p_t = p' + inner(g_t, p')

For steps that do not read the parameters this is the same as
:func:`adamfx.decoupled_weight_decay` after the step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from adamfx._src.core.base import GradientTransformation, Stage, require_stage
from adamfx._src.stages.learning_rate import lr_decay
from adamfx._src.stages.weight_decay import DecoupledWeightDecay, add_decayed_weights


@dataclasses.dataclass(frozen=True)
class DecayFirst(DecoupledWeightDecay):
    inner: Stage  # the optimizer step, run on the decayed parameters

    @property
    def elementwise(self) -> bool:
        return self.decayed_weights.elementwise and self.inner.elementwise

    def init(self, params):
        return (*super().init(params), self.inner.init(params))

    def update(self, updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("decay_first needs the params: call update(updates, state, params).")
        zeros = jax.tree.map(jnp.zeros_like, updates)
        term, weights_state = self.decayed_weights.checked_update(zeros, state[0], params)
        term, rate_state = self.rate.checked_update(term, state[1], params)  # -lr_t wd p
        decayed = jax.tree.map(lambda p, d: (p + d).astype(p.dtype), params, term)
        out, inner_state = self.inner.checked_update(updates, state[2], decayed, **extra_args)
        return jax.tree.map(jnp.add, out, term), (weights_state, rate_state, inner_state)


def decay_first(
    inner: GradientTransformation, weight_decay: float, learning_rate: Any = 1e-3, decay: float = 0.0, mask: Any = None
) -> GradientTransformation:
    """Runs adamfx ``inner`` on ``p - lr_t wd p`` and adds ``-lr_t wd p`` to its updates (Keras's order).

    State: ``(weight decay state, learning-rate state, inner state)``; the
    learning-rate copy is named ``learning_rate`` like the inner one, so
    ``set_hyperparams(learning_rate=...)`` changes both.

    >>> import adamfx, jax.numpy as jnp
    >>> tx, p = adamfx.decay_first(adamfx.trust_ratio(), 0.5, learning_rate=0.2), {"w": jnp.array([3.0, 4.0])}
    >>> tx.update({"w": jnp.array([1.0, 0.0])}, tx.init(p), p)[0]["w"]  # ||p - 0.2 * 0.5 p|| (1, 0) - 0.1 p
    Array([ 4.2, -0.4], dtype=float32)
    """
    return DecayFirst(
        require_stage(add_decayed_weights(weight_decay, mask)),
        require_stage(lr_decay(learning_rate, decay)),
        require_stage(inner),
    ).transform()
