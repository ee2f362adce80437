"""ADOPT's stages: normalise by the *previous* second moment, clip on a step schedule, then average.

ADOPT (Taniguchi et al., 2024, Alg. 2 with the clipping of Sec. 5) divides the
gradient by a second moment that does not contain it yet, which removes the
correlation between ``g_t`` and ``v_{t-1}`` that keeps Adam from converging for
every ``b2``, and only then takes the momentum::

    v_1 = |g_1|^2,   m_1 = 0                              (the first step only fills v)
    n_t = clip(g_t / max(sqrt(v_{t-1}), eps), c(t))      normalize_by_previous, clip_by_step
    v_t = b2 v_{t-1} + (1 - b2) |g_t|^2
    m_t = b1 m_{t-1} + (1 - b1) n_t                      moving_average
    p_t = p_{t-1} - lr_t m_t

The first step emits ``n_1 = 0``, so ``m_1 = 0`` whatever ``b1`` and the
first step moves nothing (only a decoupled weight decay acts), as in both peers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adamfx._src.core import checks
from adamfx._src.core import hyperparams as hp
from adamfx._src.core.base import Stage
from adamfx._src.core.numerics import compute_dtype, increment, moment_dtype, real_dtype, real_moment_dtype, scalar_like
from adamfx._src.stages import eps as eps_module
from adamfx._src.storage.protocol import (
    Storage,
    default_dtype_of,
    init_stored,
    map_stored,
    parameter_shaped,
    resolve_storage,
    stream_of,
)


class StoredMomentState(NamedTuple):
    count: jax.Array  # steps taken
    moment: Any  # the stored moment (v for normalize_by_previous, m for moving_average)
    hyperparams: dict


@dataclasses.dataclass(frozen=True)
class _OneMoment(Stage):
    """A stage that keeps one moment in ``self.storage``, from 0, with the step count."""

    storage: Storage

    def _start(self, params, dtype_of, **hyperparams):
        return StoredMomentState(jnp.zeros([], jnp.int32), init_stored(self.storage, params, dtype_of), hyperparams)

    def _map(self, leaf, updates, state):
        """``leaf(record, key, x, u) -> (out, record)`` over the updates ``u`` (``x``: in compute dtype)."""
        updates = checks.conform(updates, self.storage, parameter_shaped(self.storage, state.moment), "updates")
        count = increment(state.count)
        wide = jax.tree.map(lambda u: u.astype(compute_dtype(u.dtype)), updates)
        stream = stream_of(self, "moment")
        out, kept = map_stored(self.storage, leaf, state.moment, wide, updates, count=count, stream=stream)
        return out, StoredMomentState(count, kept, state.hyperparams)


@dataclasses.dataclass(frozen=True)
class NormalizeByPrevious(_OneMoment):
    b2: float
    eps: float
    eps_placement: str = "clamp"  # max(sqrt(v_{t-1}), eps), the one placement both peers use

    def __post_init__(self):
        super().__post_init__()
        eps_module.check_placement(self.eps_placement, ("clamp",))

    def init(self, params):
        return self._start(params, real_moment_dtype, **hp.as_arrays(**hp.complements(b2=self.b2), eps=self.eps))

    def update(self, updates, state, params=None, **extra_args):
        first = state.count == 0
        c2, eps = state.hyperparams["1-b2"], state.hyperparams["eps"]

        def leaf(record, key, g, like):
            c, e = scalar_like(c2, g), scalar_like(eps, g)
            v_prev = self.storage.decode(record, dtype=c.dtype)
            n = g / eps_module.guarded_root(v_prev, e, jnp.zeros_like(e), self.eps_placement)  # g_t / max(sqrt(v), eps)
            # v_1 = |g_1|^2, then v_t = b2 v_{t-1} + (1 - b2) |g_t|^2
            decay, weight = jnp.where(first, 0, 1 - c), jnp.where(first, 1, c)
            default = default_dtype_of(g.real, like)
            _, kept = self.storage.accumulate(
                record, g, power=2, decay=decay, weight=weight, default_dtype=default, key=key
            )
            return jnp.where(first, jnp.zeros_like(n), n).astype(like.dtype), kept

        return self._map(leaf, updates, state)


def normalize_by_previous(b2: float = 0.9999, eps: float = 1e-6, *, nu_dtype=None):
    """ADOPT's normalisation: emits ``g_t / max(sqrt(v_{t-1}), eps)`` (0 at the first step), then updates ``v``.

    ``v_1 = |g_1|^2`` and ``v_t = b2 v_{t-1} + (1 - b2) |g_t|^2``, stored as
    ``nu_dtype`` (any storage, ``"factored"`` included). Parameter-shaped in and
    out. State: ``count``, ``moment`` (= v), hyperparameters ``b2``, ``eps``.
    Used by :func:`adamfx.adopt`.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.normalize_by_previous()
    >>> n, state = tx.update({"w": jnp.array([2.0])}, tx.init({"w": jnp.zeros(1)}))
    >>> n["w"], tx.update({"w": jnp.array([3.0])}, state)[0]["w"]  # 0, then 3 / sqrt(v_1) with v_1 = 2^2
    (Array([0.], dtype=float32), Array([1.5], dtype=float32))
    """
    return NormalizeByPrevious(resolve_storage(nu_dtype, "nu_dtype", nonnegative=True), b2, eps).transform()


def quarter_power(step: jax.Array) -> jax.Array:
    """ADOPT's clipping schedule ``c(step) = step ** 0.25`` (both peers' default).

    >>> import adamfx, jax.numpy as jnp
    >>> adamfx.quarter_power(jnp.array(16.0))
    Array(2., dtype=float32, weak_type=True)
    """
    return step**0.25


class CountState(NamedTuple):
    count: jax.Array  # steps taken


@dataclasses.dataclass(frozen=True)
class ClipByStep(Stage):
    clip_value_fn: Callable[[jax.Array], Any]
    first_index: int

    def init(self, params):
        return CountState(jnp.zeros([], jnp.int32))

    def update(self, updates, state, params=None, **extra_args):
        index = state.count + self.first_index  # the step index the peer hands its schedule

        def leaf(u):
            c = jnp.asarray(self.clip_value_fn(index)).astype(real_dtype(u.dtype))
            return jnp.clip(u, -c, c)

        return jax.tree.map(leaf, updates), CountState(increment(state.count))


def clip_by_step(clip_value_fn: Callable[[jax.Array], Any] = quarter_power, *, first_index: int = 0):
    """``u <- clip(u, -c, c)`` with ``c = clip_value_fn(t - 1 + first_index)`` at step t = 1, 2, ...

    ``clip_value_fn`` receives an int32 array (jnp-traceable). optax's ``adopt``
    hands it the steps taken before this one (``first_index=0``), pytorch-optimizer's
    ``ADOPT`` the step number itself (``first_index=1``). The function is part of
    the stage's value: pass the same function object to build equal optimizers.
    State: ``count``. Used by :func:`adamfx.adopt`.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.clip_by_step(first_index=1)  # step t clips to t ** 0.25
    >>> u, state = tx.update({"w": jnp.array([-3.0, 0.5])}, tx.init(None))
    >>> u["w"], tx.update({"w": jnp.array([-3.0, 0.5])}, state)[0]["w"]  # c = 1, then 2 ** 0.25
    (Array([-1. ,  0.5], dtype=float32), Array([-1.1892071,  0.5      ], dtype=float32))
    """
    if not callable(clip_value_fn):
        raise ValueError(f"clip_value_fn={clip_value_fn!r} is invalid: it must be a callable step -> clip value.")
    return ClipByStep(clip_value_fn, int(first_index)).transform()


@dataclasses.dataclass(frozen=True)
class MovingAverage(_OneMoment):
    b1: float
    nesterov: bool

    def init(self, params):
        return self._start(params, moment_dtype, **hp.as_arrays(**hp.complements(b1=self.b1)))

    def update(self, updates, state, params=None, **extra_args):
        c1 = state.hyperparams["1-b1"]

        def leaf(record, key, u, like):
            c = scalar_like(c1, u)
            default = default_dtype_of(u, like)
            m, kept = self.storage.accumulate(record, u, decay=1 - c, weight=c, default_dtype=default, key=key)
            out = (1 - c) * m + c * u if self.nesterov else m  # look-ahead: b1 m_t + (1 - b1) u_t
            return out.astype(like.dtype), kept

        return self._map(leaf, updates, state)


def moving_average(b1: float = 0.9, *, nesterov: bool = False, mu_dtype=None):
    """The momentum of parameter-shaped updates: ``m_t = b1 m_{t-1} + (1 - b1) u_t`` from ``m_0 = 0``.

    Emits ``m_t``, or with ``nesterov=True`` the look-ahead ``b1 m_t + (1 - b1) u_t``
    (optax's ``adopt(nesterov=True)``). Stored as ``mu_dtype``. State: ``count``,
    ``moment`` (= m), hyperparameter ``b1``. Used by :func:`adamfx.adopt`.

    >>> import adamfx, jax.numpy as jnp
    >>> plain, ahead = adamfx.moving_average(0.5), adamfx.moving_average(0.5, nesterov=True)
    >>> g = {"w": jnp.array([2.0])}
    >>> plain.update(g, plain.init(g))[0]["w"], ahead.update(g, ahead.init(g))[0]["w"]  # 0.5 * 2; 0.5 * 1 + 0.5 * 2
    (Array([1.], dtype=float32), Array([1.5], dtype=float32))
    """
    return MovingAverage(resolve_storage(mu_dtype, "mu_dtype"), b1, bool(nesterov)).transform()
