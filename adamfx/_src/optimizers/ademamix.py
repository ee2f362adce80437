"""AdEMAMix: Adam with a mixture of a fast and a slow EMA of the gradient, in two conventions."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from optax import ScalarOrSchedule

from adamfx._src.core import checks
from adamfx._src.core.base import GradientTransformation
from adamfx._src.optimizers import conventions
from adamfx._src.stages.cautious import cautious as cautious_stage
from adamfx._src.stages.moments import bias_correction, normalize, scale_by_moments
from adamfx._src.stages.slow_ema import slow_ema


class AdemamixConvention(NamedTuple):
    """How one peer writes AdEMAMix; each field picks a default or a composition."""

    learning_rate: float
    weight_decay: str  # "coupled" L2 or "decoupled" (times lr)
    first_index: int  # the warmup schedulers' index at step t = 1: 0 (optax schedules read the count) or 1


ADEMAMIX_CONVENTIONS = {
    "optax": AdemamixConvention(1e-3, "decoupled", 0),  # optax.contrib.ademamix has no default lr: 1e-3
    "torch": AdemamixConvention(1e-3, "coupled", 1),  # pytorch_optimizer AdEMAMix(weight_decouple=False)
}


def kept(weight_decay: Any) -> Any:
    """``weight_decay`` such that ``finish`` keeps its stage even at 0 (as optax does): the state then has one
    structure whatever the value, so ``set_hyperparams`` and ``inject_hyperparams`` can turn the decay on."""
    return np.asarray(weight_decay) if checks.is_static_zero(weight_decay) else weight_decay


@checks.porting_aids
@conventions.peer_options()
def ademamix(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    b3: float = 0.9999,
    alpha: float = 5.0,
    eps: float = 1e-8,
    *,
    alpha_warmup: float | None = None,
    b3_warmup: float | None = None,
    weight_decay: float = 0.0,
    cautious: bool = False,
    convention: str = "optax",
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    **options: Any,
) -> GradientTransformation:
    r"""AdEMAMix (Pagliardini, Ablin & Grangier, 2025, "The AdEMAMix Optimizer: Better, Faster, Older", Alg. 1).

    For step t = 1, 2, ... with ``lr_t = learning_rate(t - 1) / (1 + decay (t - 1))``::

        m1_t = b1 m1_{t-1} + (1 - b1) g_t,    v_t = b2 v_{t-1} + (1 - b2) g_t^2     (Adam's moments)
        m2_t = b3_t m2_{t-1} + (1 - b3_t) g_t                                     (the slow EMA)
        p_t  = p_{t-1} - lr_t ((m1_t / (1 - b1^t) + alpha_t m2_t) / (sqrt(v_t / (1 - b2^t)) + eps))

    The chain is ``scale_by_moments -> bias_correction -> slow_ema -> normalize -> lr_decay``.
    With ``alpha_warmup = T_a`` and ``b3_warmup = T_b`` (steps; ``None``: constant
    ``alpha``, ``b3``) the paper's schedulers run at the index ``s`` of the step::

        alpha_t = alpha min(s / T_a, 1)
        b3_t    = min(exp(ln b1 ln b3 / ((1 - s/T_b) ln b3 + (s/T_b) ln b1)), b3)

    ==========  ==========================  =========================================  ==============  ===============
    convention  peer                        warmup index s at step t (1, 2, ...)       weight_decay    cautious=True
    ==========  ==========================  =========================================  ==============  ===============
    "optax"     optax.contrib.ademamix      t - 1 (its alpha/b3 schedules read count)  decoupled x lr  (none) as torch
    "torch"     pytorch_optimizer AdEMAMix  t (``t_alpha_beta3``, its step from 1)     coupled L2      mask on m1^
    ==========  ==========================  =========================================  ==============  ===============

    Both put eps on the corrected root ``sqrt(v^)``, leave ``m2`` uncorrected and
    default to lr 1e-3 (optax has no default), alpha 5 and b3 0.9999
    (optax's ``scale_by_ademamix`` alone defaults alpha to 6). Mapping of the warmups:
    optax takes ``b3`` and ``alpha`` as schedules ``count -> value``: ``alpha_warmup=T``
    is ``alpha=lambda n: alpha * min(n / T, 1)`` and ``b3_warmup=T`` the paper's
    ``b3_scheduler(b3, beta_start=b1, warmup=T)``; pytorch_optimizer has one
    ``t_alpha_beta3=T`` for both, i.e. ``alpha_warmup=b3_warmup=T``
    (``convention="torch"`` also runs them with different lengths). ``decoupled=True``
    is PyTorch's ``weight_decouple=True`` (``p -= lr_t wd p``, as optax); optax's
    ``mu_dtype`` also stores ``v`` where adamfx has ``nu_dtype``.

    Args:
      learning_rate: a number or a schedule ``count -> lr``.
      b1, b2, b3: decay rates of the fast EMA, the second moment and the slow EMA, in [0, 1).
      alpha: weight of the slow EMA (at least 0).
      eps: added to ``sqrt(v^)``.
      alpha_warmup, b3_warmup: warmup lengths in steps (at least 1), or ``None`` for none.
      weight_decay: coupled L2 or decoupled (``p -= lr_t wd p``), as ``decoupled`` or the convention says.
      weight_decay_mask, decoupled, decay, convention: as :func:`adamfx.sgd`.
      cautious: the Cautious mask (Liang et al., 2024; :func:`adamfx.cautious`) on the fast EMA only, as
        pytorch_optimizer's ``AdEMAMix(cautious=True)``: per leaf of d elements ``m1^`` is kept where
        ``m1^ g > 0`` and scaled by ``d / (nnz + 1)`` before ``alpha_t m2`` is added (``g`` after a coupled
        L2 term). The same rule in both conventions (optax has none). Not elementwise: ``fused`` rejects it.
      maximize, clipnorm, clipvalue, global_clipnorm, loss_scale_factor: as :func:`adamfx.sgd`.
      mu_dtype: storage of both first moments ``m1`` and ``m2``; nu_dtype: of ``v``.

    The first update of a gradient of ones is ``-lr (1 + alpha (1 - b3)) / (1 + eps)``:

    >>> import adamfx, jax.numpy as jnp
    >>> tx, params = adamfx.ademamix(1e-3), {"w": jnp.zeros(2)}
    >>> tx.update({"w": jnp.ones(2)}, tx.init(params), params)[0]["w"]  # -1e-3 (1 + 5 (1 - 0.9999)) / (1 + 1e-8)
    Array([-0.0010005, -0.0010005], dtype=float32)
    """
    conv = conventions.lookup(ADEMAMIX_CONVENTIONS, convention)
    conventions.require(
        "ademamix", learning_rate=learning_rate, b1=b1, b2=b2, b3=b3, alpha=alpha, eps=eps, weight_decay=weight_decay
    )
    fast = [scale_by_moments(b1, b2, mu_dtype=mu_dtype, nu_dtype=nu_dtype), bias_correction()]
    return conventions.finish(
        [
            *([cautious_stage(*fast, rescale="count")] if cautious else fast),  # masks m1^ against g
            slow_ema(
                b3,
                alpha,
                alpha_warmup=alpha_warmup,
                b3_warmup=b3_warmup,
                first_index=conv.first_index,
                mu_dtype=mu_dtype,
            ),
            normalize(eps),
        ],
        conv,
        learning_rate=learning_rate,
        weight_decay=kept(weight_decay),
        **options,
    )
