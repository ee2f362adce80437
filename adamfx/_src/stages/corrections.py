"""Refinements of Adam's bias correction: Nadam's Nesterov look-ahead and RAdam's rectification.

- :func:`nesterov_momentum` replaces :func:`bias_correction` in Nadam (Dozat,
  2016): the first moment is read one step ahead,
  ``m^_t = mu_{t+1} m_t / (1 - prod_{i<=t+1} mu_i) + (1 - mu_t) g_t / (1 - prod_{i<=t} mu_i)``.
- :func:`rectify` replaces :func:`normalize` in RAdam (Liu et al., 2020): it
  normalizes only once the variance of the adaptive step is tractable, and
  scales by the rectification term ``r_t``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from adamfx._src.core import hyperparams as hp
from adamfx._src.core.base import GradientTransformation, Stage
from adamfx._src.core.numerics import compute_dtype, scalar_like
from adamfx._src.stages.eps import EpsPlacement
from adamfx._src.stages.moments import Normalize, NormalizeState, bias_corrected, one_minus_power, require_moments


class NesterovState(NamedTuple):
    mu_product: jax.Array  # prod_{i<=t} mu_i over the steps taken
    hyperparams: dict  # momentum_decay (when the schedule is on)


@dataclasses.dataclass(frozen=True)
class NesterovMomentum(Stage):
    momentum_decay: float | None

    def init(self, params):
        values = {} if self.momentum_decay is None else {"momentum_decay": self.momentum_decay}
        return NesterovState(jnp.ones([], dtype=float), hp.as_arrays(**values))

    def _weights(self, one_minus_b1, t, mu_product, hyperparams):
        """The weights of g_t and m_t in m^_t, and P_t (the product of mu_i up to t)."""
        if self.momentum_decay is None:  # mu_t = b1: P_t = b1^t, 1 - P_t from 1 - b1 as in bias_correction
            grad_weight = one_minus_b1 / one_minus_power(one_minus_b1, t)
            return grad_weight, (1 - one_minus_b1) / one_minus_power(one_minus_b1, t + 1), mu_product
        b1 = 1 - one_minus_b1
        warmup = lambda step: 0.5 * 0.96 ** (step * hyperparams["momentum_decay"])
        step = t.astype(b1.dtype)
        mu_now, mu_next = b1 * (1 - warmup(step)), b1 * (1 - warmup(step + 1))
        product = mu_product * mu_now
        return (one_minus_b1 + b1 * warmup(step)) / (1 - product), mu_next / (1 - product * mu_next), product

    def update(self, moments, state, params=None, **extra_args):
        moments = require_moments(moments, "nesterov_momentum")
        if moments.mu is None:
            raise ValueError("nesterov_momentum needs the first moment: build scale_by_moments with b1.")
        one_minus_b1 = jnp.asarray(moments.one_minus_b1, dtype=state.mu_product.dtype)
        grad_weight, moment_weight, product = self._weights(
            one_minus_b1, moments.count, state.mu_product, state.hyperparams
        )

        def leaf(m, g):
            g = g.astype(compute_dtype(g.dtype))
            return scalar_like(moment_weight, m) * m + scalar_like(grad_weight, g) * g

        mu = jax.tree.map(leaf, moments.mu, moments.grad)
        return bias_corrected(moments, mu=False)._replace(mu=mu), NesterovState(product, state.hyperparams)


def nesterov_momentum(momentum_decay: float | None = 4e-3) -> GradientTransformation:
    """Nadam's look-ahead first moment, with Dozat's momentum schedule.

    With ``mu_t = b1 (1 - 0.5 * 0.96^(t momentum_decay))`` and ``P_t = prod_{i<=t} mu_i``::

        m^_t = mu_{t+1} m_t / (1 - P_t mu_{t+1}) + (1 - mu_t) g_t / (1 - P_t)
        v^_t = v_t / (1 - b2^t)

    ``momentum_decay`` is PyTorch's psi (4e-3); Keras's Nadam is psi = 1;
    ``None`` keeps ``mu_t = b1`` constant, optax's ``nadam`` form
    ``b1 m_t / (1 - b1^(t+1)) + (1 - b1) g_t / (1 - b1^t)``. Takes the place of
    :func:`bias_correction` (it corrects ``v`` the same way). ``b1`` and ``t``
    come from the :class:`Moments`. State: the running product ``mu_product``
    (like PyTorch and Keras, it keeps the history if ``b1`` changes; unused with constant ``b1``),
    hyperparameter ``momentum_decay``. Used by :func:`adamfx.nadam`, and by
    :func:`adamfx.radam` with ``nesterov=True``.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.chain(adamfx.scale_by_moments(0.5, 0.5), adamfx.nesterov_momentum(None))
    >>> ahead, _ = tx.update({"w": jnp.array([2.0])}, tx.init({"w": jnp.zeros(1)}))  # m_1 = 1
    >>> ahead.mu["w"], ahead.nu["w"]  # 0.5 * 1 / (1 - 0.5^2) + 0.5 * 2 / (1 - 0.5), and v^ = 2 / (1 - 0.5)
    (Array([2.6666667], dtype=float32), Array([4.], dtype=float32))
    """
    return NesterovMomentum(momentum_decay).transform()


def _series(x, first: int, last: int, coefficient):
    """sum_{k=first}^{last} coefficient(k) x^k, by Horner's rule."""
    total = jnp.zeros_like(x)
    for k in range(last, first - 1, -1):
        total = total * x + coefficient(k)
    return total * x**first


def sma_lengths(one_minus_b2, count):
    """RAdam's ``rho_inf = 2 / (1 - b2) - 1`` and ``rho_t = rho_inf - 2 t b2^t / (1 - b2^t)``, from ``1 - b2``.

    For ``t (1 - b2) < 1`` the two terms of ``rho_t`` nearly cancel (float32
    loses up to four digits at b2 = 0.999 and all of them at 0.9999), so there
    it is computed as ``2 D / (q E) + 2 t - 1`` with ``q = 1 - b2``,
    ``E = 1 - b2^t = -expm1(t log1p(-q))`` and
    ``D = E - t q = -(expm1(z) - z) - t (log1p(-q) + q)``, ``z = t log1p(-q)``,
    whose brackets are summed as their Taylor series.
    """
    q = one_minus_b2
    t = count.astype(q.dtype)
    rho_inf = 2 / q - 1
    log_b2 = jnp.log1p(-q)
    z = t * log_b2
    e = -jnp.expm1(z)
    direct = rho_inf - 2 * t * (1 - e) / e
    small = jnp.maximum(z, -1.0)
    expm1_minus_z = _series(small, 2, 18, lambda k: 1.0 / math.factorial(k))
    log1p_plus_q = jnp.where(q < 0.5, -_series(jnp.minimum(q, 0.5), 2, 52, lambda k: 1.0 / k), log_b2 + q)
    stable = 2 * (-expm1_minus_z - t * log1p_plus_q) / (q * e) + 2 * t - 1
    return rho_inf, jnp.where(z > -1.0, stable, direct)


@dataclasses.dataclass(frozen=True)
class Rectify(Normalize):
    threshold: float
    inclusive: bool
    degenerate_to_sgd: bool = True

    def init(self, params):
        state = super().init(params)
        return NormalizeState({**state.hyperparams, **hp.as_arrays(threshold=self.threshold)})

    def update(self, moments, state, params=None, **extra_args):
        moments = require_moments(moments, "rectify")
        normalized, state = super().update(moments, state, params)
        rho_inf, rho_t = sma_lengths(moments.one_minus_b2, moments.count)
        r = jnp.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        threshold = state.hyperparams["threshold"]
        tractable = rho_t >= threshold if self.inclusive else rho_t > threshold

        def leaf(n, m):
            fallback = m.astype(n.dtype) if self.degenerate_to_sgd else jnp.zeros_like(n)
            return jnp.where(tractable, scalar_like(r, n) * n, fallback)

        return jax.tree.map(leaf, normalized, moments.mu), state


def rectify(
    eps: float = 1e-8,
    *,
    eps_root: float = 0.0,
    eps_placement: EpsPlacement = "outside",
    threshold: float = 5.0,
    inclusive: bool = True,
    degenerate_to_sgd: bool = True,
) -> GradientTransformation:
    """RAdam's rectified step (Liu et al., 2020, Alg. 2).

    With ``rho_inf = 2 / (1 - b2) - 1`` and ``rho_t = rho_inf - 2 t b2^t / (1 - b2^t)``
    (computed without cancellation, see :func:`sma_lengths`)::

        r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
        u_t = r_t m^_t / (sqrt(v^_t) + eps)   if rho_t >= threshold (inclusive) or > threshold
        u_t = m^_t                            otherwise (plain momentum SGD)
        u_t = 0                               otherwise, with degenerate_to_sgd=False (adabelief-pytorch)

    ``eps``, ``eps_root`` and ``eps_placement`` as :func:`normalize` (PyTorch adds eps
    to the raw ``sqrt(v)``: ``eps_placement="outside_raw"``). PyTorch takes ``rho_t > 5``,
    optax ``rho_t >= threshold`` (5). State: ``eps``, ``eps_root``, ``threshold``.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.chain(adamfx.scale_by_moments(0.9, 0.999), adamfx.bias_correction(), adamfx.rectify())
    >>> tx.update({"w": jnp.array([2.0])}, tx.init({"w": jnp.zeros(1)}))[0]["w"].round(5)  # rho_1 = 1 < 5: m^_1 = g
    Array([2.], dtype=float32)
    """
    return Rectify(eps, eps_root, eps_placement, threshold, bool(inclusive), bool(degenerate_to_sgd)).transform()
