"""LAMB's layer-wise trust ratio (You et al., 2020, "Large Batch Optimization for Deep Learning", Alg. 2).

Per leaf (a "layer"), the update is rescaled so that its norm matches the parameter's::

    r = ||p|| / ||u||      (r = 1 where ||p|| = 0 or ||u|| = 0: optax and Keras alike)
    u <- r u

``||p||`` is the norm of the parameter the step starts from -- or, in Keras, of the parameter after its
decoupled weight decay ``p - lr_t wd p`` (Keras decays the weights before the step): ``after=`` gives the
transform whose update ``-lr_t wd p`` is added to ``p`` first (:func:`adamfx.decoupled_weight_decay`).
The norms are per-leaf reductions: the stage is not elementwise, and :func:`adamfx.fused` rejects it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adamfx._src.core.base import GradientTransformation, Stage, identity_state
from adamfx._src.core.numerics import abs_sq, compute_dtype


def _norm(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(abs_sq(x)))


def scale_leaf(u: jax.Array, p: jax.Array) -> jax.Array:
    """``u ||p|| / ||u||``, or ``u`` where either norm is 0."""
    x = u.astype(compute_dtype(u.dtype))
    p_norm, u_norm = _norm(p.astype(x.dtype)), _norm(x)
    zero = (p_norm == 0) | (u_norm == 0)
    ratio = jnp.where(zero, jnp.ones_like(p_norm), p_norm / jnp.where(zero, jnp.ones_like(u_norm), u_norm))
    return (x * ratio).astype(u.dtype)


class TrustRatioState(NamedTuple):
    after: Any  # the state of the transform applied to p before its norm is taken (or EmptyState)


@dataclasses.dataclass(frozen=True)
class TrustRatio(Stage):
    after: GradientTransformation | None  # a transform, not a Stage field: fused must see this stage whole

    @property
    def elementwise(self) -> bool:  # per-leaf norms
        return False

    def init(self, params):
        return TrustRatioState(identity_state() if self.after is None else self.after.init(params))

    def update(self, updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("trust_ratio needs the params: call update(updates, state, params).")
        after = state.after
        if self.after is not None:  # p - lr_t wd p: the weights Keras takes the norm of
            zeros = jax.tree.map(jnp.zeros_like, params)
            step, after = self.after.update(zeros, after, params)
            params = jax.tree.map(lambda p, d: p + d.astype(p.dtype), params, step)
        return jax.tree.map(scale_leaf, updates, params), TrustRatioState(after)


def trust_ratio(*, after: GradientTransformation | None = None):
    """Scales each leaf's update by ``||p|| / ||u||`` (1 where either norm is 0).

    Placed after ``add_decayed_weights`` the weight decay enters ``u`` and the ratio (optax's ``lamb``,
    the paper); placed before a decoupled decay it does not (Keras's ``Lamb``, with
    ``after=decoupled_weight_decay(wd, lr)`` so that ``||p||`` is taken after the decay, as Keras does).
    State: the state of ``after`` (which holds its own copy of the learning rate, changed together by
    :func:`adamfx.set_hyperparams`). Used by :func:`adamfx.lamb`.

    >>> import adamfx, jax.numpy as jnp
    >>> tx, p = adamfx.trust_ratio(), {"w": jnp.array([3.0, 4.0])}
    >>> tx.update({"w": jnp.array([0.5, 0.0])}, tx.init(p), p)[0]["w"]  # u ||p|| / ||u|| = u 5 / 0.5
    Array([5., 0.], dtype=float32)
    """
    return TrustRatio(after).transform()
