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
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

from adamfx._src.core import checks
from adamfx._src.core import hyperparams as hp
from adamfx._src.core.base import GradientTransformation, Stage, Stateless
from adamfx._src.core.numerics import (
    abs_sq,
    compute_dtype,
    increment,
    real_dtype,
    real_moment_dtype,
    safe_divide,
    scalar_like,
)
from adamfx._src.stages.eps import check_placement
from adamfx._src.stages.moments import Moments, require_moments
from adamfx._src.storage.protocol import (
    Storage,
    check_keeps_elements,
    init_stored,
    map_stored,
    parameter_shaped,
    resolve_storage,
    stream_of,
)


class _StoredMoment:
    """Mixin for a stage that keeps one moment in ``self.storage``: as elementwise as its storage."""

    storage: Storage  # a field of each dataclass that mixes this in

    def _conform(self, tree, stored, what: str):
        """``tree`` checked against the stored moment, in the state's dtypes (see :func:`checks.conform`)."""
        return checks.conform(tree, self.storage, parameter_shaped(self.storage, stored), what)


class SumState(NamedTuple):
    count: jax.Array  # steps taken
    nu: Any  # stored running sum of |g|^2
    hyperparams: dict  # none: the initial value only matters at init


@dataclasses.dataclass(frozen=True)
class AccumulateSquares(_StoredMoment, Stage):
    initial_value: float
    storage: Storage

    def hyperparameters(self):
        return {"initial_accumulator_value": self.initial_value}

    def init(self, params):  # a traced v_0 (optax.inject_hyperparams under jit) is encoded too
        nu = init_stored(self.storage, params, real_moment_dtype, self.initial_value)
        return SumState(jnp.zeros([], jnp.int32), nu, {})

    def update(self, grads, state, params=None, **extra_args):
        grads = self._conform(grads, state.nu, "gradients")
        count = increment(state.count)

        def leaf(record, key, g):  # v_t = v_{t-1} + |g_t|^2
            wide = g.astype(compute_dtype(g.dtype))
            one, default = scalar_like(1.0, wide.real), real_dtype(g.dtype)
            return self.storage.accumulate(record, wide, power=2, decay=one, weight=one, default_dtype=default, key=key)

        nu, kept = map_stored(self.storage, leaf, state.nu, grads, count=count, stream=stream_of(self, "nu"))
        one = jnp.asarray(1.0, dtype=float)
        # 1 - b = 1 for both rates: nothing for bias_correction to correct, eps placements agree
        return Moments(grads, None, nu, count, one, one, one), SumState(count, kept, state.hyperparams)


def accumulate_squares(initial_accumulator_value: float = 0.0, *, nu_dtype=None) -> GradientTransformation:
    """Adagrad's running sum ``v_t = v_{t-1} + |g_t|^2``, ``v_0 = initial_accumulator_value``.

    Emits a :class:`Moments` with ``nu = v_t`` and no first moment, for
    :func:`normalize` (there is no bias to correct). State: ``count``, ``nu``
    (stored as ``nu_dtype``). Used by :func:`adamfx.adagrad`.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.accumulate_squares(1.0)
    >>> tx.update({"w": jnp.array([2.0])}, tx.init({"w": jnp.zeros(1)}))[0].nu["w"]  # 1 + 2^2
    Array([5.], dtype=float32)
    """
    storage = resolve_storage(nu_dtype, "nu_dtype", nonnegative=True)
    return AccumulateSquares(initial_accumulator_value, storage).transform()


@dataclasses.dataclass(frozen=True)
class Center(Stateless):
    def update(self, moments, state, params=None, **extra_args):
        moments = require_moments(moments, "center")
        if moments.mu is None:
            raise ValueError("center needs the first moment: build scale_by_moments with b1 (RMSprop: b1 = rho).")
        # v >= |m|^2 holds exactly for two EMAs of one rate (Jensen); rounding of narrow
        # storage (int8, bf16) can break it by an ulp, and sqrt of a negative is NaN.
        nu = jax.tree.map(lambda v, m: jnp.maximum(v - abs_sq(m), 0), moments.nu, moments.mu)
        return moments._replace(mu=None, nu=nu), state


def center() -> GradientTransformation:
    """Centered second moment: ``v <- v - |m|^2``, the variance of the gradient; drops ``m``.

    :func:`normalize` then divides the gradient itself by the root of the
    variance. No state. Used by :func:`adamfx.rmsprop` with ``centered=True``.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.chain(adamfx.scale_by_moments(0.5, 0.5), adamfx.center())
    >>> centered, _ = tx.update({"w": jnp.array([2.0])}, tx.init({"w": jnp.zeros(1)}))
    >>> centered.nu["w"], centered.mu  # v - m^2 = 0.5 * 4 - (0.5 * 2)^2
    (Array([1.], dtype=float32), None)
    """
    return Center().transform()


class InfinityNormState(NamedTuple):
    nu: Any  # stored u, the decayed running maximum of |g|
    hyperparams: dict  # b2, eps


@dataclasses.dataclass(frozen=True)
class InfinityNorm(_StoredMoment, Stage):
    b2: float
    eps: float
    eps_placement: str
    storage: Storage

    def __post_init__(self):
        super().__post_init__()
        check_placement(self.eps_placement, ("inside", "outside"))

    def init(self, params):
        nu = init_stored(self.storage, params, real_moment_dtype)
        return InfinityNormState(nu, hp.as_arrays(b2=self.b2, eps=self.eps))

    def update(self, moments, state, params=None, **extra_args):
        moments = require_moments(moments, "infinity_norm")
        moments = moments._replace(grad=self._conform(moments.grad, state.nu, "gradients"))
        b2, eps = state.hyperparams["b2"], state.hyperparams["eps"]
        inside = self.eps_placement == "inside"  # eps in the maxed |g| or on u: one term, not a stage

        def leaf(record, key, g, m):
            x = g.astype(compute_dtype(g.dtype))
            eps_ = scalar_like(eps, x)
            magnitude = jnp.abs(x) + eps_ if inside else jnp.abs(x)
            # u_t = max(b2 u_{t-1}, |g_t| (+ eps))
            u = jnp.maximum(scalar_like(b2, x) * self.storage.decode(record, dtype=magnitude.dtype), magnitude)
            u, kept = self.storage.store(u, default_dtype=real_dtype(g.dtype), key=key)
            denominator = u if inside else u + eps_
            out = safe_divide(m.astype(compute_dtype(m.dtype)), denominator)
            return out.astype(g.dtype), kept

        count, stream = moments.count, stream_of(self, "nu")
        updates, kept = map_stored(self.storage, leaf, state.nu, moments.grad, moments.mu, count=count, stream=stream)
        return updates, InfinityNormState(kept, state.hyperparams)


def infinity_norm(
    b2: float = 0.999, eps: float = 1e-8, *, eps_placement: Literal["inside", "outside"] = "inside", nu_dtype=None
) -> GradientTransformation:
    """Adamax's denominator: ``u_t = max(b2 u_{t-1}, |g_t|)``, emits ``m / u_t``.

    ``eps_placement`` places eps (the vocabulary of :mod:`adamfx._src.stages.eps`):

    - ``"inside"`` the norm (PyTorch, optax): ``u_t = max(b2 u_{t-1}, |g_t| + eps)``, emits ``m / u_t``;
    - ``"outside"`` it (Keras): ``u_t = max(b2 u_{t-1}, |g_t|)``, emits ``m / (u_t + eps)``.

    Consumes the (bias-corrected) first moment of a :class:`Moments`; emits
    parameter-shaped updates. State: ``nu`` (u, stored as ``nu_dtype``),
    hyperparameters ``b2``, ``eps``. Used by :func:`adamfx.adamax`.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.chain(adamfx.scale_by_moments(0.5, None), adamfx.bias_correction(), adamfx.infinity_norm(0.5, 0.0))
    >>> tx.update({"w": jnp.array([2.0, -4.0])}, tx.init({"w": jnp.zeros(2)}))[0]["w"]  # m^ / max(0, |g|)
    Array([ 1., -1.], dtype=float32)
    """
    storage = resolve_storage(nu_dtype, "nu_dtype", nonnegative=True)
    check_keeps_elements(storage, "nu_dtype", nu_dtype, "infinity_norm", "a running maximum")
    return InfinityNorm(b2, eps, eps_placement, storage).transform()


class UpdateRmsState(NamedTuple):
    count: jax.Array  # steps taken (for the stochastic rounding's keys)
    delta_sq: Any  # stored moving average of the squared updates
    hyperparams: dict  # 1-rho (reported as rho), eps


@dataclasses.dataclass(frozen=True)
class UpdateRms(_StoredMoment, Stage):
    rho: float
    eps: float
    storage: Storage

    def init(self, params):
        return UpdateRmsState(
            jnp.zeros([], jnp.int32),
            init_stored(self.storage, params, real_moment_dtype),
            hp.as_arrays(**hp.complements(rho=self.rho), eps=self.eps),
        )

    def update(self, updates, state, params=None, **extra_args):
        updates = self._conform(updates, state.delta_sq, "updates")
        one_minus_rho, eps = state.hyperparams[hp.COMPLEMENT + "rho"], state.hyperparams["eps"]
        count = increment(state.count)

        def leaf(record, key, u):
            x = u.astype(compute_dtype(u.dtype))
            # d_t = sqrt(w_{t-1} + eps) u_t,  w_t = rho w_{t-1} + (1 - rho) |d_t|^2
            w = self.storage.decode(record, dtype=real_dtype(x.dtype))
            delta = jnp.sqrt(w + scalar_like(eps, x)) * x
            c = scalar_like(one_minus_rho, x)
            default, keep = real_dtype(u.dtype), self.storage.accumulate
            _, kept = keep(record, delta, power=2, decay=1 - c, weight=c, default_dtype=default, key=key)
            return delta.astype(u.dtype), kept

        stream = stream_of(self, "delta_sq")
        updates, kept = map_stored(self.storage, leaf, state.delta_sq, updates, count=count, stream=stream)
        return updates, UpdateRmsState(count, kept, state.hyperparams)


def update_rms(rho: float = 0.9, eps: float = 1e-6, *, nu_dtype=None) -> GradientTransformation:
    """Adadelta's step: ``d_t = sqrt(w_{t-1} + eps) u_t``, ``w_t = rho w_{t-1} + (1 - rho) |d_t|^2``.

    Placed after :func:`normalize` with ``eps_placement="inside"`` (which emits
    ``u_t = g_t / sqrt(v_t + eps)``) it gives Zeiler's (2012, Alg. 1) update
    ``d_t = sqrt(w_{t-1} + eps) / sqrt(v_t + eps) g_t``. The hyperparameter is
    named ``eps`` in the state, like :func:`normalize`'s, so ``set_hyperparams(eps=...)``
    moves Adadelta's one eps in both.
    State: ``count``, ``delta_sq`` (``w``, stored as ``nu_dtype``), hyperparameters ``rho``,
    ``eps``. Used by :func:`adamfx.adadelta`.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.update_rms(0.5, eps=1e-4)
    >>> d, state = tx.update({"w": jnp.array([2.0])}, tx.init({"w": jnp.zeros(1)}))
    >>> d["w"], state.delta_sq["w"]  # sqrt(0 + 1e-4) 2, then w = 0.5 d^2
    (Array([0.02], dtype=float32), Array([0.0002], dtype=float32))
    """
    return UpdateRms(rho, eps, resolve_storage(nu_dtype, "nu_dtype", nonnegative=True)).transform()
