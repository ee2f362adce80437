"""Prodigy: learning-rate-free Adam with a distance estimate, in two conventions."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from optax import ScalarOrSchedule

from adamfx._src.core import checks
from adamfx._src.core.base import GradientTransformation
from adamfx._src.optimizers import conventions
from adamfx._src.optimizers.ademamix import kept
from adamfx._src.stages.distance import distance_estimate


class ProdigyConvention(NamedTuple):
    """How one peer writes Prodigy; each field picks a default or a composition."""

    learning_rate: float
    weight_decay: str  # the meaning of decoupled=None (the factory's default is decoupled=True)
    bias_correction: bool  # default of use_bias_correction


PRODIGY_CONVENTIONS = {
    "optax": ProdigyConvention(1.0, "decoupled", True),  # optax.contrib.prodigy always corrects
    "torch": ProdigyConvention(1.0, "decoupled", False),  # prodigyopt Prodigy(use_bias_correction=False)
}


@checks.porting_aids
@conventions.peer_options(omit=("decoupled",))
def prodigy(
    learning_rate: ScalarOrSchedule = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    b3: float | None = None,
    eps: float = 1e-8,
    d0: float = 1e-6,
    d_coef: float = 1.0,
    weight_decay: float = 0.0,
    safeguard_warmup: bool = False,
    *,
    decoupled: bool = True,
    use_bias_correction: bool | None = None,
    growth_rate: float = math.inf,
    convention: str = "optax",
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    **options: Any,
) -> GradientTransformation:
    r"""Prodigy (Mishchenko & Defazio, 2024, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner", Alg. 4).

    Adam whose step size ``d`` estimates the distance to the solution. For step
    k = 0, 1, ... (t = k + 1) with ``lr_k = learning_rate(k) / (1 + decay k)``
    (a multiplier: leave it 1, or give a schedule such as a cosine decay)::

        dlr_k = d_k lr_k bc_k,   bc_k = sqrt(1 - b2^t) / (1 - b1^t)  (use_bias_correction; else 1)
        m_k = b1 m_{k-1} + (1 - b1) d_k g_k,   v_k = b2 v_{k-1} + (1 - b2) d_k^2 g_k^2
        r_k = b3 r_{k-1} + d_k dlr_k <g_k, p_0 - p_k>       (sums over every leaf)
        s_k = b3 s_{k-1} + d_k dlr_k g_k                     (safeguard_warmup: d_k^2 g_k)
        d_{k+1} = min(max(d0, d_coef r_j / ||s_j||_1 for j <= k), growth_rate d_k)
        p_{k+1} = p_k - dlr_k (m_k / (sqrt(v_k) + d_{k+1} eps) + wd p_k)    (decoupled weight decay)

    ``b3=None`` is ``sqrt(b2)``. The chain is ``distance_estimate -> lr_decay``
    (coupled weight decay, ``decoupled=False``, adds ``wd p`` to the gradient first).

    ==========  ========================  ===================  ===========  ===============
    convention  peer                      use_bias_correction  growth_rate  coupled decay
    ==========  ========================  ===================  ===========  ===============
    "optax"     optax.contrib.prodigy     True (always)        -- (*)       chain it (**)
    "torch"     prodigyopt 1.1.2 Prodigy  False (default)      yes          decouple=False
    ==========  ========================  ===================  ===========  ===============

    Both: lr 1.0, eps 1e-8 times ``d_{k+1}`` (the paper has ``d_k``), d0 1e-6
    (optax's ``estim_lr0``), d_coef 1 (optax's ``estim_lr_coef``), decoupled weight
    decay scaled by ``dlr_k``. (*) optax has no growth limit (``inf``); adamfx
    applies prodigyopt's rule in both conventions. (**) optax's own advice:
    ``optax.chain(optax.add_decayed_weights(wd), prodigy(...))``. A step before any
    nonzero gradient keeps ``d`` (prodigyopt skips it, optax divides 0 by 0).

    ``d``, ``d_max`` and the sums are state: checkpoints carry them, and
    ``set_hyperparams`` changes ``learning_rate``, ``b1``, ``b2``, ``b3``, ``eps``,
    ``d_coef`` and ``weight_decay`` (``d0`` only seeds ``d``; ``growth_rate``, like
    ``safeguard_warmup``, is fixed with the optimizer: its default, inf, is no number to keep).
    The sums run over all leaves, which ``fused`` leaves unchanged (it supports Prodigy).

    Args:
      learning_rate: a multiplier of the estimated step (number or schedule ``count -> value``).
      b1, b2: decay rates of the moments; b3: of the sums r and s (``None``: ``sqrt(b2)``).
      eps: added to ``sqrt(v)``, times ``d``.
      d0: the initial estimate of d; d_coef: factor on the estimate (the preferred knob).
      weight_decay: decoupled (``dlr wd p``) or coupled L2 (``decoupled=False``); weight_decay_mask: where.
      safeguard_warmup: leave ``lr_k bc_k`` out of ``s`` (for warmup schedules).
      use_bias_correction: ``None`` takes the convention's default.
      growth_rate: the most d may grow per step (``inf``: unlimited; at least 1).
      decay, convention, maximize, clipnorm, clipvalue, global_clipnorm, loss_scale_factor: as :func:`adamfx.sgd`.
      mu_dtype, nu_dtype: storage of ``m`` and ``v`` (float dtypes or ``"int8"``; not ``"factored"``).

    The first step moves each coordinate by ``d0`` (for a gradient of ones):

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.prodigy(convention="optax")  # bias-corrected: m^ / sqrt(v^) = 1
    >>> params = {"w": jnp.ones(2)}
    >>> updates, state = tx.update({"w": jnp.ones(2)}, tx.init(params), params)
    >>> print(f"{float(updates['w'][0]):.4e}")
    -1.0000e-06
    """
    conv = conventions.lookup(PRODIGY_CONVENTIONS, convention)
    conventions.require(
        "prodigy", learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, d0=d0, d_coef=d_coef, weight_decay=weight_decay
    )
    checks.check_hyperparameter("b3", b3, optional=True)
    if growth_rate is None:
        raise ValueError(f"growth_rate=None is invalid: it must be {checks.HYPERPARAMETERS['growth_rate'].describe()}")
    if not (checks.is_concrete(growth_rate) and float(growth_rate) == math.inf):
        checks.check_hyperparameter("growth_rate", growth_rate)
    decoupled = conventions.pick(decoupled, conv.weight_decay == "decoupled")
    if decoupled and callable(weight_decay):
        raise ValueError("prodigy(weight_decay=<a schedule>) is invalid with decoupled=True: give a number.")
    learning_rate = conventions.pick(learning_rate, conv.learning_rate)
    core = distance_estimate(
        b1,
        b2,
        b3,
        eps,
        d0=d0,
        d_coef=d_coef,
        growth_rate=growth_rate,
        learning_rate=learning_rate,
        decay=options["decay"],
        weight_decay=weight_decay if decoupled else None,  # kept at 0 (as optax): one state structure
        mask=options["weight_decay_mask"] if decoupled else None,
        safeguard_warmup=safeguard_warmup,
        bias_correction=conventions.pick(use_bias_correction, conv.bias_correction),
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
    )
    return conventions.finish(
        [core],
        conv,
        learning_rate=learning_rate,
        weight_decay=None if decoupled else kept(weight_decay),
        decoupled=False,  # a decoupled decay is inside distance_estimate (scaled by dlr)
        **options,
    )
