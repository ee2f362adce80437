"""Other forms of the second moment: a running sum, centering, an infinity norm, an update RMS.

Each stage here plays the part :func:`scale_by_moments` or :func:`normalize`
plays in Adam, for one of Adam's relatives:

- :func:`accumulate_squares` -- Adagrad's running sum ``v_t = v_{t-1} + |g_t|^2``
  (Duchi, Hazan & Singer, 2011), in place of the moving average;
- :func:`center` -- centered RMSprop's variance ``v - |m|^2`` (Graves, 2013);
- :func:`infinity_norm` -- Adamax's ``u_t = max(b2 u_{t-1}, |g_t|)`` in place of
  ``sqrt(v)`` (Kingma & Ba, 2015, Sec. 7.1);
- :func:`update_rms` -- Adadelta's RMS of past updates (Zeiler, 2012), after
  :func:`normalize`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamfx._src import checks
from adamfx._src import hyperparams as hp
from adamfx._src.base import Stage, identity_state
from adamfx._src.moments import Moments
from adamfx._src.moments import _require_moments as require_moments
from adamfx._src.storage import resolve_storage
from adamfx._src.tree_math import abs_sq, compute_dtype, map_pair, real_dtype, scalar_like


def _stored_constant(params, storage, value):
    """A real moment per leaf, filled with ``value`` and encoded by ``storage``."""
    fill = lambda p: storage.encode(  # noqa: E731
        jnp.full(p.shape, value, real_dtype(compute_dtype(p.dtype))), real_dtype(p.dtype)
    )
    return jax.tree.map(fill, params)


class SumState(NamedTuple):
    count: jax.Array  # steps taken
    nu: Any  # stored running sum of |g|^2
    hyperparams: dict  # none: the initial value only matters at init


@dataclasses.dataclass(frozen=True)
class AccumulateSquares(Stage):
    initial_value: float
    storage: Any

    def init(self, params):
        return SumState(jnp.zeros([], jnp.int32), _stored_constant(params, self.storage, self.initial_value), {})

    def update(self, grads, state, params=None, **extra_args):
        checks.check_same_structure(grads, state.nu, "gradients", "optimizer state (built by init)")

        def leaf(g, stored):
            x = abs_sq(g.astype(compute_dtype(g.dtype)))
            new = self.storage.decode(stored, x.dtype) + x
            return new, self.storage.encode(new, real_dtype(g.dtype))

        nu, kept = map_pair(leaf, grads, state.nu)
        count = optax.safe_increment(state.count)
        one = jnp.asarray(1.0, dtype=float)
        # 1 - b = 1 for both rates: nothing for bias_correction to correct, eps placements agree
        return Moments(grads, None, nu, count, one, one, one), SumState(count, kept, state.hyperparams)


def accumulate_squares(initial_accumulator_value: float = 0.0, *, nu_dtype=None):
    """Adagrad's running sum ``v_t = v_{t-1} + |g_t|^2``, ``v_0 = initial_accumulator_value``.

    Emits a :class:`Moments` with ``nu = v_t`` and no first moment, for
    :func:`normalize` (there is no bias to correct). State: ``count``, ``nu``
    (stored as ``nu_dtype``). Used by :func:`adamfx.adagrad`.
    """
    checks.check_range("initial_accumulator_value", initial_accumulator_value, 0.0)
    return AccumulateSquares(initial_accumulator_value, resolve_storage(nu_dtype, "nu_dtype")).transform()


@dataclasses.dataclass(frozen=True)
class Center(Stage):
    def init(self, params):
        return identity_state()

    def update(self, moments, state, params=None, **extra_args):
        moments = require_moments(moments, "center")
        if moments.mu is None:
            raise ValueError("center needs the first moment: build scale_by_moments with b1 (RMSprop: b1 = rho).")
        nu = jax.tree.map(lambda v, m: v - abs_sq(m), moments.nu, moments.mu)
        return moments._replace(mu=None, nu=nu), state


def center():
    """Centered second moment: ``v <- v - |m|^2``, the variance of the gradient; drops ``m``.

    :func:`normalize` then divides the gradient itself by the root of the
    variance. No state. Used by :func:`adamfx.rmsprop` with ``centered=True``.
    """
    return Center().transform()


class InfinityNormState(NamedTuple):
    nu: Any  # stored u, the decayed running maximum of |g|
    hyperparams: dict  # b2, eps


EPS_IN_MAX = ("max", "denominator")


@dataclasses.dataclass(frozen=True)
class InfinityNorm(Stage):
    b2: float
    eps: float
    eps_in: str
    storage: Any

    def init(self, params):
        return InfinityNormState(_stored_constant(params, self.storage, 0.0), hp.as_arrays(b2=self.b2, eps=self.eps))

    def update(self, moments, state, params=None, **extra_args):
        moments = require_moments(moments, "infinity_norm")
        b2, eps = state.hyperparams["b2"], state.hyperparams["eps"]

        def leaf(m, g, stored):
            x = g.astype(compute_dtype(g.dtype))
            eps_ = scalar_like(eps, x)
            magnitude = jnp.abs(x) + eps_ if self.eps_in == "max" else jnp.abs(x)
            u = jnp.maximum(scalar_like(b2, x) * self.storage.decode(stored, magnitude.dtype), magnitude)
            denominator = u if self.eps_in == "max" else u + eps_
            out = m.astype(compute_dtype(m.dtype)) / denominator
            return out.astype(g.dtype), self.storage.encode(u, real_dtype(g.dtype))

        updates, kept = map_pair(leaf, moments.mu, moments.grad, state.nu)
        return updates, InfinityNormState(kept, state.hyperparams)


def infinity_norm(b2: float = 0.999, eps: float = 1e-8, *, eps_in: str = "max", nu_dtype=None):
    """Adamax's denominator: ``u_t = max(b2 u_{t-1}, |g_t|)``, emits ``m / u_t``.

    ``eps_in`` places eps:

    - ``"max"`` (PyTorch, optax): ``u_t = max(b2 u_{t-1}, |g_t| + eps)``, emits ``m / u_t``;
    - ``"denominator"`` (Keras): ``u_t = max(b2 u_{t-1}, |g_t|)``, emits ``m / (u_t + eps)``.

    Consumes the (bias-corrected) first moment of a :class:`Moments`; emits
    parameter-shaped updates. State: ``nu`` (u, stored as ``nu_dtype``),
    hyperparameters ``b2``, ``eps``. Used by :func:`adamfx.adamax`.
    """
    checks.check_range("b2", b2, 0.0, 1.0)
    checks.check_range("eps", eps, 0.0)
    checks.check_choice("eps_in", eps_in, EPS_IN_MAX)
    return InfinityNorm(b2, eps, eps_in, resolve_storage(nu_dtype, "nu_dtype")).transform()


class UpdateRmsState(NamedTuple):
    delta_sq: Any  # stored moving average of the squared updates
    hyperparams: dict  # 1-rho (reported as rho), eps_root


@dataclasses.dataclass(frozen=True)
class UpdateRms(Stage):
    rho: float
    eps_root: float
    storage: Any

    def init(self, params):
        return UpdateRmsState(
            _stored_constant(params, self.storage, 0.0),
            hp.as_arrays(**hp.complements(rho=self.rho), eps_root=self.eps_root),
        )

    def update(self, updates, state, params=None, **extra_args):
        checks.check_same_structure(updates, state.delta_sq, "updates", "optimizer state (built by init)")
        one_minus_rho, eps_root = state.hyperparams[hp.COMPLEMENT + "rho"], state.hyperparams["eps_root"]

        def leaf(u, stored):
            x = u.astype(compute_dtype(u.dtype))
            old = self.storage.decode(stored, real_dtype(x.dtype))
            delta = jnp.sqrt(old + scalar_like(eps_root, x)) * x
            c = scalar_like(one_minus_rho, x)
            new = (1 - c) * old + c * abs_sq(delta)
            return delta.astype(u.dtype), self.storage.encode(new, real_dtype(u.dtype))

        updates, kept = map_pair(leaf, updates, state.delta_sq)
        return updates, UpdateRmsState(kept, state.hyperparams)


def update_rms(rho: float = 0.9, eps: float = 1e-6, *, nu_dtype=None):
    """Adadelta's step: ``d_t = sqrt(w_{t-1} + eps) u_t``, ``w_t = rho w_{t-1} + (1 - rho) |d_t|^2``.

    Placed after :func:`normalize` with ``eps_root=eps`` (which emits
    ``u_t = g_t / sqrt(v_t + eps)``) it gives Zeiler's (2012, Alg. 1) update
    ``d_t = sqrt(w_{t-1} + eps) / sqrt(v_t + eps) g_t``. The hyperparameter is
    named ``eps_root`` in the state, like the eps inside :func:`normalize`'s
    root, so ``set_hyperparams(eps_root=...)`` moves Adadelta's one eps in both.
    State: ``delta_sq`` (``w``, stored as ``nu_dtype``), hyperparameters ``rho``,
    ``eps_root``. Used by :func:`adamfx.adadelta`.
    """
    checks.check_range("rho", rho, 0.0, 1.0)
    checks.check_range("eps", eps, 0.0)
    return UpdateRms(rho, eps, resolve_storage(nu_dtype, "nu_dtype")).transform()
