"""AdaBelief's second moment: the moving average of the squared prediction error ``g - m``.

AdaBelief (Zhuang et al., 2020, Alg. 2) keeps Adam's first moment and, in place
of ``|g|^2``, the squared distance of the gradient from it (the "belief" in the
observed gradient)::

    m_t = b1 m_{t-1} + (1 - b1) g_t
    s_t = b2 s_{t-1} + (1 - b2) |g_t - m_t|^2 + eps_root

``eps_root`` is added to the *stored* ``s_t`` every step, as optax
(``eps_root``) and adabelief-pytorch (its ``eps``, in place) both do, so it
accumulates to ``eps_root (1 - b2^t) / (1 - b2)``. The stage emits the same
:class:`~adamfx._src.stages.moments.Moments` value as :func:`scale_by_moments`
(``nu`` is ``s_t``), so Adam's :func:`bias_correction`, :func:`max_nu`,
:func:`normalize` and RAdam's :func:`rectify` follow it unchanged.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from adamfx._src.core import checks
from adamfx._src.core import hyperparams as hp
from adamfx._src.core.base import Stage
from adamfx._src.core.numerics import abs_sq, compute_dtype, increment, scalar_like
from adamfx._src.stages.corrections import Rectify
from adamfx._src.stages.eps import EpsPlacement
from adamfx._src.stages.moments import Moments, MomentsState, Normalize, ScaleByMoments
from adamfx._src.storage.protocol import (
    Storage,
    default_dtype_of,
    map_stored,
    parameter_shaped,
    resolve_storage,
    stream_of,
)


@dataclasses.dataclass(frozen=True)
class ScaleByBelief(ScaleByMoments):
    mu_storage: Storage  # both moments are kept (ScaleByMoments may keep one)
    nu_storage: Storage
    eps_root: float = 0.0

    def hyperparameters(self):
        return {**super().hyperparameters(), "eps_root": self.eps_root}

    def init(self, params):
        state = super().init(params)  # (b1, b2 as complements: ScaleByMoments.init reads our hyperparameters())
        rates = {name: value for name, value in state.hyperparams.items() if name != hp.COMPLEMENT + "eps_root"}
        return state._replace(hyperparams={**rates, **hp.as_arrays(eps_root=self.eps_root)})

    def update(self, grads, state, params=None, **extra_args):
        for storage, stored in ((self.mu_storage, state.mu), (self.nu_storage, state.nu)):
            grads = checks.conform(grads, storage, parameter_shaped(storage, stored), "gradients")
        count = increment(state.count)
        c1, c2 = state.hyperparams["1-b1"], state.hyperparams["1-b2"]
        eps_root = state.hyperparams["eps_root"]
        g = jax.tree.map(lambda g: g.astype(compute_dtype(g.dtype)), grads)
        key = self._shared_key(count)

        def first(record, key, g, like):  # m_t = b1 m_{t-1} + (1 - b1) g_t
            c = scalar_like(c1, g.real)
            default = default_dtype_of(g, like)
            return self.mu_storage.accumulate(record, g, decay=1 - c, weight=c, default_dtype=default, key=key)

        def belief(record, key, g, m, like):  # s_t = b2 s_{t-1} + (1 - b2) |g_t - m_t|^2 + eps_root
            c, e = scalar_like(c2, g.real), scalar_like(eps_root, g.real)
            s = (1 - c) * self.nu_storage.decode(record, dtype=c.dtype) + c * abs_sq(g - m) + e
            return self.nu_storage.store(s, default_dtype=default_dtype_of(g.real, like), key=key)

        mu, new_mu = map_stored(
            self.mu_storage, first, state.mu, g, grads, count=count, stream=stream_of(self, "mu"), key=key
        )
        nu, new_nu = map_stored(
            self.nu_storage, belief, state.nu, g, mu, grads, count=count, stream=stream_of(self, "nu"), key=key
        )
        one = jnp.asarray(1.0, dtype=float)
        return Moments(grads, mu, nu, count, c1, c2, one), MomentsState(count, new_mu, new_nu, state.hyperparams)


def scale_by_belief(b1: float = 0.9, b2: float = 0.999, *, eps_root: float = 0.0, mu_dtype=None, nu_dtype=None):
    """AdaBelief's moments: ``m_t`` (Adam's) and ``s_t = b2 s_{t-1} + (1 - b2) |g_t - m_t|^2 + eps_root``.

    Computed in at least float32 and stored as ``mu_dtype``/``nu_dtype`` like
    :func:`scale_by_moments` (``"factored"`` works for ``s``, which is never
    negative; it is stored through :meth:`Storage.store` of the full ``s_t``,
    since ``s`` is not an average of ``|g|^2``). Emits a :class:`Moments` value
    for :func:`bias_correction`, :func:`max_nu`, :func:`normalize` or :func:`rectify`.
    State: ``count``, ``mu``, ``nu`` (= ``s``), hyperparameters ``b1``, ``b2``, ``eps_root``.
    Used by :func:`adamfx.adabelief`.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.scale_by_belief(0.5, 0.5)
    >>> belief, _ = tx.update({"w": jnp.array([2.0])}, tx.init({"w": jnp.zeros(1)}))
    >>> belief.mu["w"], belief.nu["w"]  # m = 0.5 * 2, s = 0.5 (2 - 1)^2
    (Array([1.], dtype=float32), Array([0.5], dtype=float32))
    """
    mu_storage = resolve_storage(mu_dtype, "mu_dtype")
    nu_storage = resolve_storage(nu_dtype, "nu_dtype", nonnegative=True)
    return ScaleByBelief(b1, b2, mu_storage, nu_storage, eps_root=eps_root).transform()


class _EpsRootInBelief(Stage):
    """Mixin for the stage that divides by ``sqrt(s^)``: ``eps_root`` already sits in ``s_t``, so this stage keeps
    no ``eps_root`` of its own (one name, one value: ``set_hyperparams(eps_root=...)`` moves the belief's)."""

    def hyperparameters(self):
        return {name: value for name, value in super().hyperparameters().items() if name != "eps_root"}

    def init(self, params):
        state = super().init(params)
        return state._replace(hyperparams={k: v for k, v in state.hyperparams.items() if k != "eps_root"})

    def update(self, moments, state, params=None, **extra_args):
        full = {**state.hyperparams, "eps_root": jnp.zeros_like(state.hyperparams["eps"])}
        updates, _ = super().update(moments, state._replace(hyperparams=full), params)
        return updates, state


@dataclasses.dataclass(frozen=True)
class BeliefNormalize(_EpsRootInBelief, Normalize):
    pass


@dataclasses.dataclass(frozen=True)
class BeliefRectify(_EpsRootInBelief, Rectify):
    pass


def belief_normalize(eps: float, *, eps_placement: EpsPlacement = "outside"):
    """:func:`normalize` (``m^ / (sqrt(s^) + eps)``) after :func:`scale_by_belief`, with no ``eps_root`` of its own."""
    return BeliefNormalize(eps, 0.0, eps_placement).transform()


def belief_rectify(eps: float, *, eps_placement: EpsPlacement, degenerate_to_sgd: bool = True, threshold: float = 5.0):
    """:func:`rectify` (RAdam's step, ``rho_t >= threshold``) after :func:`scale_by_belief`, with no ``eps_root``."""
    return BeliefRectify(eps, 0.0, eps_placement, threshold, True, bool(degenerate_to_sgd)).transform()
