"""AdaBelief: Adam with the belief second moment, in the conventions of optax and adabelief-pytorch."""

from __future__ import annotations

from typing import Any, NamedTuple

from optax import ScalarOrSchedule

from adamfx._src.core import checks
from adamfx._src.core.base import GradientTransformation
from adamfx._src.optimizers import conventions
from adamfx._src.stages.belief import belief_normalize, belief_rectify, scale_by_belief
from adamfx._src.stages.corrections import nesterov_momentum
from adamfx._src.stages.moments import bias_correction, max_nu


class AdaBeliefConvention(NamedTuple):
    """How one peer writes AdaBelief; each field picks a default or a composition."""

    learning_rate: float
    eps: float
    eps_root: float | None  # added to the stored s_t; None: the same as eps (adabelief-pytorch adds eps there too)
    rectify: bool  # default of rectify
    rectified_eps_placement: str  # the rectified step's eps: on sqrt(s^) ("outside") or on sqrt(s) ("outside_raw")
    amsgrad_on: str  # AMSGrad maxes the raw s ("raw", before bias_correction) or the corrected s^ ("corrected")
    amsgrad_rectified: bool  # the rectified step reads the running maximum (adabelief-pytorch's reads s_t)
    weight_decay: str  # "coupled" L2 or "decoupled"


ADABELIEF_CONVENTIONS = {
    # optax.adabelief has no default lr, rectification, AMSGrad or weight decay: RAdam's and AMSGrad's optax
    # forms (eps on sqrt(s^), the max of s^), weight decay as optax.adamw does it.
    "optax": AdaBeliefConvention(1e-3, 1e-16, 1e-16, False, "outside", "corrected", True, "decoupled"),
    "torch": AdaBeliefConvention(1e-3, 1e-16, None, True, "outside_raw", "raw", False, "decoupled"),
}


@checks.porting_aids
@conventions.peer_options()
def adabelief(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float | None = None,
    *,
    eps_root: float | None = None,
    weight_decay: ScalarOrSchedule | None = None,
    rectify: bool | None = None,
    degenerated_to_sgd: bool = True,
    amsgrad: bool = False,
    nesterov: bool = False,
    convention: str = "optax",
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    **options: Any,
) -> GradientTransformation:
    r"""AdaBelief (Zhuang et al., 2020, "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed
    Gradients", NeurIPS, Alg. 2).

    For step t = 1, 2, ... with ``lr_t = learning_rate(t - 1) / (1 + decay (t - 1))``::

        m_t  = b1 m_{t-1} + (1 - b1) g_t
        s_t  = b2 s_{t-1} + (1 - b2) |g_t - m_t|^2 + eps_root       (eps_root is kept in s_t)
        m^_t = m_t / (1 - b1^t),   s^_t = s_t / (1 - b2^t)
        p_t  = p_{t-1} - lr_t m^_t / (sqrt(s^_t) + eps)

    The chain is ``scale_by_belief -> bias_correction -> normalize -> lr_decay``
    (:func:`adamfx.scale_by_belief` then Adam's stages). ``rectify=True`` puts
    RAdam's :func:`adamfx.rectify` in place of ``normalize`` (``r_t`` times the
    step once ``rho_t >= 5``; before that ``lr_t m^_t`` with
    ``degenerated_to_sgd=True``, no step otherwise); ``amsgrad=True`` adds
    :func:`adamfx.max_nu`; ``nesterov=True`` reads the first moment one step
    ahead with :func:`adamfx.nesterov_momentum` (constant ``b1``, optax's form).

    ==========  =====  =========  =======  ================  ==============  ================  ==========
    convention  eps    eps_root   rectify  rectified eps on  AMSGrad max of  rectified + AMSG  decay
    ==========  =====  =========  =======  ================  ==============  ================  ==========
    "optax"     1e-16  1e-16      False    sqrt(s^)          corrected s^    uses the max      decoupled
    "torch"     1e-16  = eps      True     sqrt(s) (raw)     raw s           ignores the max   decoupled
    ==========  =====  =========  =======  ================  ==============  ================  ==========

    ``"optax"`` is ``optax.adabelief`` (``nesterov`` is its option; it has no
    rectification, AMSGrad or weight decay: adamfx uses optax's RAdam and AMSGrad
    forms and ``optax.adamw``'s decoupled decay, ``p -= lr_t wd p``).
    ``"torch"`` is adabelief-pytorch 0.2.1's ``AdaBelief`` (its defaults:
    ``eps=1e-16, weight_decouple=True, rectify=True``): its ``eps`` goes both into
    ``s_t`` and into the denominator (``eps_root=None`` follows it); its rectified
    step is ``lr_t r_t sqrt(1 - b2^t) / (1 - b1^t) m_t / (sqrt(s_t) + eps)``
    (eps on the raw root, ``rho_t >= 5``); with ``rectify=True`` its ``amsgrad``
    keeps a maximum that no step reads, so here it changes nothing;
    ``weight_decouple=False`` is ``decoupled=False`` (coupled L2). Its
    ``fixed_decay=True`` (``p -= wd p``, not scaled by lr) has no equivalent here.
    Nesterov is optax's look-ahead in both conventions (adabelief-pytorch has none).

    Args:
      learning_rate: a number or a schedule ``count -> lr``.
      b1, b2: decay rates of ``m`` and ``s``, in [0, 1).
      eps: added to the root in the denominator; ``None`` takes the convention's default.
      eps_root: added to ``s_t`` every step (kept in the state); ``None`` takes the convention's.
      weight_decay: a number or a schedule; ``None`` or 0: none. Decoupled (``p -= lr_t wd p``) in both
        conventions unless ``decoupled=False`` (coupled L2, ``g += wd p``).
      weight_decay_mask, decoupled: as :func:`adamfx.adam`.
      rectify: RAdam's rectified step (``None``: the convention's default).
      degenerated_to_sgd: with ``rectify``, take ``lr_t m^_t`` while ``rho_t < 5`` (else no step).
      amsgrad: keep the running maximum of ``s``.
      nesterov: optax's Nesterov look-ahead of the first moment.
      decay, maximize, clipnorm, clipvalue, global_clipnorm, loss_scale_factor, convention: as :func:`adamfx.adam`.
      mu_dtype, nu_dtype: storage of ``m`` and ``s`` (see :func:`adamfx.adam`).

    The first step: ``m^_1 = g`` and ``s^_1 = (g - m_1)^2 = b1^2 g^2`` (plus ``eps_root``), a step of ``lr / b1``:

    >>> import adamfx, jax.numpy as jnp, optax
    >>> tx = adamfx.adabelief(1e-3, rectify=False, convention="torch")
    >>> params = {"w": jnp.ones(2)}
    >>> updates, _ = tx.update({"w": jnp.array([0.5, -2.0])}, tx.init(params), params)
    >>> updates["w"]
    Array([-0.00111111,  0.00111111], dtype=float32)
    """
    conv = conventions.lookup(ADABELIEF_CONVENTIONS, convention)
    conventions.require("adabelief", learning_rate=learning_rate, b1=b1, b2=b2)
    eps = conventions.pick(eps, conv.eps)
    eps_root = conventions.pick(eps_root, conventions.pick(conv.eps_root, eps))
    rectified = conventions.pick(rectify, conv.rectify)
    maximum = [max_nu(nu_dtype=nu_dtype)] if amsgrad and (conv.amsgrad_rectified or not rectified) else []
    if rectified:  # RAdam's step on the belief
        final = belief_rectify(eps, eps_placement=conv.rectified_eps_placement, degenerate_to_sgd=degenerated_to_sgd)
    else:
        final = belief_normalize(eps)
    return conventions.finish(
        [
            scale_by_belief(b1, b2, eps_root=eps_root, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
            *(maximum if conv.amsgrad_on == "raw" else []),
            nesterov_momentum(None) if nesterov else bias_correction(),
            *(maximum if conv.amsgrad_on == "corrected" else []),
            final,
        ],
        conv,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        **options,
    )
