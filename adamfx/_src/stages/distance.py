"""Prodigy's distance estimate (Mishchenko & Defazio, 2024, "Prodigy: An Expeditiously Adaptive
Parameter-Free Learner", Alg. 4, as optax.contrib and prodigyopt implement it).

Adam on the gradient scaled by an estimate ``d`` of the distance to the solution, with
``d`` grown from the weighted sums ``r`` and ``s`` (global: over every leaf)::

    dlr_k = d_k lr_k bc_k                      bc_k = sqrt(1 - b2^t) / (1 - b1^t), or 1
    m_k   = b1 m_{k-1} + (1 - b1) d_k g_k
    v_k   = b2 v_{k-1} + (1 - b2) d_k^2 g_k^2
    r_k   = b3 r_{k-1} + d_k dlr_k <g_k, p_0 - p_k>
    s_k   = b3 s_{k-1} + d_k dlr_k g_k         (safeguard_warmup: d_k^2 g_k)
    d^_k  = d_coef r_k / ||s_k||_1
    d_{k+1} = min(max(d_max, d^_k), growth_rate d_k)     (the first step that finds d^ > d0 is not limited)
    u_k   = dlr_k (m_k / (sqrt(v_k) + d_{k+1} eps) + wd p_k)

The peers keep ``r`` and ``s`` divided by ``d0``; the factor cancels in ``d^``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adamfx._src.core import checks, frozen
from adamfx._src.core import hyperparams as hp
from adamfx._src.core.base import Stage
from adamfx._src.core.numerics import compute_dtype, increment, moment_dtype, safe_divide, scalar_like
from adamfx._src.stages.moments import one_minus_power
from adamfx._src.storage.protocol import (
    Storage,
    check_keeps_elements,
    default_dtype_of,
    init_stored,
    map_stored,
    parameter_shaped,
    resolve_storage,
    stream_of,
)


class DistanceState(NamedTuple):
    count: jax.Array  # steps taken (k)
    mu: Any  # stored m (of d g)
    nu: Any  # stored v (of (d g)^2)
    s: Any  # the weighted gradient sum s, per leaf (compute dtype)
    p0: Any  # the initial parameters
    d: jax.Array  # the distance estimate d_k (0 before the first step: d_0 is the hyperparameter d0)
    d_max: jax.Array  # the largest estimate d^ seen (and d0; 0 before the first step)
    numerator: jax.Array  # the weighted sum r
    hyperparams: dict


@dataclasses.dataclass(frozen=True)
class DistanceEstimate(Stage):
    b1: float
    b2: float
    b3: float
    eps: float
    d0: float
    d_coef: float
    growth_rate: float | None  # None: unlimited (a static field, not in the state)
    learning_rate: Any  # a number or a schedule: the r and s sums weigh each step by it
    decay: float
    weight_decay: float | None  # decoupled weight decay (None: none)
    mask: Any
    safeguard_warmup: bool
    bias_correction: bool
    mu_storage: Storage
    nu_storage: Storage

    def hyperparameters(self):
        values = super().hyperparameters()
        return {name: v for name, v in values.items() if v is not None and not callable(v)}  # not a schedule

    def __post_init__(self):
        super().__post_init__()
        frozen.check_mask("weight_decay_mask", self.mask)

    @property
    def elementwise(self) -> bool:
        """Its sums run over every element of the tree, so a flat layout leaves them unchanged."""
        return self.mask is None and self.mu_storage.elementwise and self.nu_storage.elementwise

    def init(self, params):
        values = self.hyperparameters()
        values.pop("growth_rate", None)  # a recipe choice, like safeguard_warmup: inf is no number to keep
        rates = {name: values.pop(name) for name in ("b1", "b2", "b3")}
        zero = jnp.zeros([], dtype=float)
        return DistanceState(
            count=jnp.zeros([], jnp.int32),
            mu=init_stored(self.mu_storage, params, moment_dtype),
            nu=init_stored(self.nu_storage, params, moment_dtype),
            s=jax.tree.map(lambda p: jnp.zeros(p.shape, compute_dtype(p.dtype)), params),
            p0=jax.tree.map(jnp.array, params),
            d=zero,  # d_0 = d0 is read from the hyperparameters at the first step, so that
            d_max=zero,  # set_hyperparams(d0=...) and sweep(d0=...) reach it
            numerator=zero,
            hyperparams=hp.as_arrays(**hp.complements(**rates), **values),
        )

    def _rate(self, count, values):
        """lr_k = schedule(k) / (1 + decay k), as :func:`lr_decay` computes it."""
        base = self.learning_rate(count) if callable(self.learning_rate) else values["learning_rate"]
        return jnp.asarray(base, dtype=values["decay"].dtype) / (1 + values["decay"] * count)

    def _next_d(self, d, d_max, d_hat, values):
        """d_{k+1} = min(max(d_max, d^), growth_rate d_k); d_k = max(d_k, d^) first while d_k is still d0."""
        d_max = jnp.maximum(d_max, d_hat)
        if self.growth_rate is None:
            return d_max, d_max
        growth = self.growth_rate  # a number, or traced under inject_hyperparams (inf there: no limit)
        start = jnp.where(d == values["d0"], jnp.maximum(d, d_hat), d)
        return jnp.where(jnp.isinf(growth), d_max, jnp.minimum(d_max, start * growth)), d_max

    def update(self, grads, state, params=None, **extra_args):
        if params is None:
            raise ValueError(
                "prodigy needs the params (its distance estimate reads p_0 - p): call update(g, state, p)."
            )
        grads = checks.conform(grads, self.mu_storage, parameter_shaped(self.mu_storage, state.mu), "gradients")
        values, k = state.hyperparams, state.count
        c1, c2, c3 = (values[hp.COMPLEMENT + name] for name in ("b1", "b2", "b3"))
        t = increment(k)
        bc = jnp.sqrt(one_minus_power(c2, t)) / one_minus_power(c1, t) if self.bias_correction else 1.0
        first = k == 0
        d = jnp.where(first, values["d0"].astype(state.d.dtype), state.d)
        d_max = jnp.where(first, d, state.d_max)
        dlr = d * self._rate(k, values) * bc
        g = jax.tree.map(lambda g: g.astype(compute_dtype(g.dtype)), grads)

        # r_k = b3 r_{k-1} + d dlr <g, p0 - p>,  s_k = b3 s_{k-1} + d dlr g (or d^2 g),  d^ = d_coef r_k / |s_k|_1
        dots = jax.tree.map(lambda g, p0, p: jnp.sum(g * (p0 - p).astype(g.dtype)), g, state.p0, params)
        numerator = (1 - c3) * state.numerator + d * dlr * sum(jax.tree.leaves(dots))
        weight = d * (d if self.safeguard_warmup else dlr)
        s = jax.tree.map(lambda s, g: scalar_like(1 - c3, s) * s + scalar_like(weight, s) * g, state.s, g)
        denominator = sum(jnp.sum(jnp.abs(x)).astype(numerator.dtype) for x in jax.tree.leaves(s))
        safe = jnp.where(denominator > 0, denominator, 1.0)
        d_hat = jnp.where(denominator > 0, values["d_coef"] * numerator / safe, 0.0)  # no gradient yet: keep d
        d_next, d_max = self._next_d(d, d_max, d_hat, values)

        def moment(storage, stored, power, c, field):  # b old + (1 - b) (d g)^power
            def leaf(record, key, g, like):
                x = scalar_like(d, g) * g
                c_ = scalar_like(c, g)
                default = default_dtype_of(g, like)
                return storage.accumulate(
                    record, x, power=power, decay=1 - c_, weight=c_, default_dtype=default, key=key
                )

            return map_stored(storage, leaf, stored, g, grads, count=t, stream=stream_of(self, field))

        mu, kept_mu = moment(self.mu_storage, state.mu, 1, c1, "mu")
        nu, kept_nu = moment(self.nu_storage, state.nu, 2, c2, "nu")
        scale = d * bc  # dlr / lr_k: the final lr_decay multiplies by lr_k

        def leaf(m, v, p, decayed, like):  # d bc (m / (sqrt(v) + d_{k+1} eps) + wd p)
            u = safe_divide(m, jnp.sqrt(v) + scalar_like(d_next * values["eps"], v))
            if self.weight_decay is not None:
                u = jnp.where(decayed, u + scalar_like(values["weight_decay"], u) * p.astype(u.dtype), u)
            return (scalar_like(scale, u) * u).astype(like.dtype)

        decayed = jax.tree.map(lambda _: True, params) if self.mask is None else self._mask(params)
        updates = jax.tree.map(leaf, mu, nu, params, decayed, grads)
        new = DistanceState(t, kept_mu, kept_nu, s, state.p0, d_next, d_max, numerator, values)
        return updates, new

    def _mask(self, params):
        mask = frozen.resolve_mask(frozen.thaw(self.mask), params, "weight_decay_mask")
        return jax.tree.map(lambda m: m if isinstance(m, (bool, np.bool_)) else jnp.asarray(m), mask)


def distance_estimate(
    b1: float = 0.9,
    b2: float = 0.999,
    b3: float | None = None,
    eps: float = 1e-8,
    *,
    d0: float = 1e-6,
    d_coef: float = 1.0,
    growth_rate: float | None = None,
    learning_rate: Any = 1.0,
    decay: float = 0.0,
    weight_decay: float | None = None,
    mask: Any = None,
    safeguard_warmup: bool = False,
    bias_correction: bool = True,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
):
    """Prodigy's d-scaled Adam step and distance estimate (module docstring): emits ``u_k / lr_k``.

    Follow it by :func:`lr_decay` with the same ``learning_rate`` and ``decay``
    (the sums weigh each step by ``lr_k``, so the stage keeps its own copy; one
    ``set_hyperparams(learning_rate=...)`` changes both). ``b3=None`` is
    ``sqrt(b2)``; ``growth_rate=None`` (or inf) leaves d's growth unlimited;
    ``weight_decay`` here is the decoupled ``dlr wd p`` (coupled L2 goes before
    the stage); ``bias_correction=False`` takes ``bc = 1`` (prodigyopt's default).
    A step before any nonzero gradient (``||s||_1 = 0``) keeps ``d``.
    State: ``count``, ``mu``, ``nu`` (stored as ``mu_dtype`` / ``nu_dtype``),
    ``s``, ``p0``, ``d``, ``d_max``, ``numerator`` and the hyperparameters (not ``growth_rate``,
    fixed with the recipe like ``safeguard_warmup``: its default, inf, is no number to keep).

    >>> import adamfx, jax.numpy as jnp
    >>> tx, p = adamfx.chain(adamfx.distance_estimate(), adamfx.lr_decay(1.0)), {"w": jnp.ones(2)}
    >>> updates, state = tx.update({"w": jnp.array([1.0, -3.0])}, tx.init(p), p)
    >>> (updates["w"] / 1e-6).round(4), round(float(state[0].d), 12)  # the first step is -d0 sign(g); d = d0
    (Array([-1.,  1.], dtype=float32), 1e-06)
    """
    if growth_rate is not None and checks.is_concrete(growth_rate) and float(growth_rate) == float("inf"):
        growth_rate = None
    mu_storage = resolve_storage(mu_dtype, "mu_dtype")
    nu_storage = resolve_storage(nu_dtype, "nu_dtype", nonnegative=True)
    for storage, name, spec in ((mu_storage, "mu_dtype", mu_dtype), (nu_storage, "nu_dtype", nu_dtype)):
        check_keeps_elements(storage, name, spec, "prodigy", "its d-scaled moment")
    return DistanceEstimate(
        b1,
        b2,
        b2**0.5 if b3 is None else b3,  # b3 = sqrt(b2) by default
        eps,
        d0,
        d_coef,
        growth_rate,
        learning_rate,
        decay,
        weight_decay,
        frozen.freeze(mask),
        bool(safeguard_warmup),
        bool(bias_correction),
        mu_storage,
        nu_storage,
    ).transform()
