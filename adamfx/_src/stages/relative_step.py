"""Adafactor's step size: ``relative_step_size``.

Shazeer & Stern, 2018, Sec. 8 (Alg. 4/5, line "alpha_t"): the step is relative
to the scale of the parameter,

    rho_t   = min(lr_t, 1 / sqrt(t))       relative step (the paper: lr_t = 1e-2)
    rho_t   = lr_t                         relative=False
    alpha_t = max(eps_scale, RMS(p_{t-1})) rho_t      parameter scale (or rho_t alone)
    out     = alpha_t u_t

with ``lr_t = learning_rate(t - 1) / (1 + decay (t - 1))`` as in :func:`adamfx.lr_decay`
and ``RMS(p) = sqrt(mean(p^2))`` over the leaf. Unlike ``lr_decay`` it keeps the
sign (optax's Adafactor negates at the very end, after momentum and weight decay).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from adamfx._src.core import hyperparams as hp
from adamfx._src.core.base import GradientTransformation
from adamfx._src.core.numerics import compute_dtype, increment, scalar_like
from adamfx._src.stages.learning_rate import LrDecay, LrDecayState
from adamfx._src.stages.update_clipping import rms


@dataclasses.dataclass(frozen=True)
class RelativeStepSize(LrDecay):
    relative: bool = True
    parameter_scale: bool = True
    eps_scale: float = 1e-3

    @property
    def elementwise(self) -> bool:  # the parameter scale is an RMS over each leaf
        return not self.parameter_scale

    def hyperparameters(self):
        values = super().hyperparameters()
        return values if self.parameter_scale else {k: v for k, v in values.items() if k != "eps_scale"}

    def init(self, params):
        state = super().init(params)
        if not self.parameter_scale:
            return state
        return state._replace(hyperparams={**state.hyperparams, **hp.as_arrays(eps_scale=self.eps_scale)})

    def update(self, updates, state, params=None, **extra_args):
        if self.parameter_scale and params is None:
            raise ValueError(
                "relative_step_size(parameter_scale=True) needs the params: call update(updates, state, params)."
            )
        rho = self._rate(state.count, state.hyperparams)  # lr_t
        count = increment(state.count)
        if self.relative:  # rho_t = min(lr_t, 1 / sqrt(t))
            rho = jnp.minimum(rho, 1 / jnp.sqrt(count.astype(rho.dtype)))

        def leaf(u, p):
            x = u.astype(compute_dtype(u.dtype))
            alpha = scalar_like(rho, x.real)
            if self.parameter_scale:  # alpha_t = max(eps_scale, RMS(p)) rho_t
                scale = jnp.maximum(scalar_like(state.hyperparams["eps_scale"], x.real), rms(p.astype(x.dtype)))
                alpha = alpha * scale.astype(alpha.dtype)
            return (alpha * x).astype(u.dtype)

        params = updates if params is None else params
        return jax.tree.map(leaf, updates, params), LrDecayState(count, rho, state.hyperparams)


def relative_step_size(
    learning_rate: Any = 1e-2,
    *,
    relative: bool = True,
    parameter_scale: bool = True,
    eps_scale: float = 1e-3,
    decay: float = 0.0,
) -> GradientTransformation:
    """Scales updates by Adafactor's ``alpha_t = max(eps_scale, RMS(p)) min(lr_t, 1/sqrt(t))`` (see the module).

    ``relative=False`` takes ``rho_t = lr_t``; ``parameter_scale=False`` drops
    the ``max(eps_scale, RMS(p))`` factor. No sign flip. State: ``count``, the
    ``rho_t`` of the last step (``learning_rate``), hyperparameters
    ``learning_rate`` (a number), ``decay``, ``eps_scale``.

    >>> import adamfx, jax.numpy as jnp
    >>> tx, p = adamfx.relative_step_size(0.01), {"w": jnp.array([2.0, -2.0])}
    >>> tx.update({"w": jnp.ones(2)}, tx.init(p), p)[0]["w"]  # max(1e-3, RMS(p) = 2) min(0.01, 1 / sqrt(1))
    Array([0.02, 0.02], dtype=float32)
    """
    return RelativeStepSize(learning_rate, decay, bool(relative), bool(parameter_scale), eps_scale).transform()
