"""Adam, AdamW and AMSGrad as chains of the stages, in three conventions."""

from __future__ import annotations

from typing import Any, NamedTuple

from optax import ScalarOrSchedule

from adamfx._src.core import checks
from adamfx._src.core.base import GradientTransformation
from adamfx._src.optimizers import conventions
from adamfx._src.stages.cautious import cautious as cautious_stage
from adamfx._src.stages.corrections import nesterov_momentum
from adamfx._src.stages.moments import bias_correction, max_nu, normalize, scale_by_moments


class AdamConvention(NamedTuple):
    """How one peer writes Adam; each field picks a default or a composition, not a formula."""

    learning_rate: float  # default learning rate
    eps: float  # default eps
    eps_placement: str  # "outside": sqrt(v^) + eps; "outside_raw": eps on the uncorrected sqrt(v) (Keras)
    weight_decay: str  # meaning of adam(weight_decay=...): "coupled" L2 or "decoupled"
    amsgrad_on: str  # which v AMSGrad maxes: "raw" v (max_nu before bias_correction) or "corrected" v^ (after)
    adamw_weight_decay: float  # default weight decay of adamw (and of the other "...w" optimizers)
    cautious_rescale: str = "count"  # cautious=True: d / (nnz + 1), the paper's code (no peer has a cautious Adam)


ADAM_CONVENTIONS = {
    "optax": AdamConvention(1e-3, 1e-8, "outside", "coupled", "corrected", 1e-4),  # no default lr in optax: the others
    "torch": AdamConvention(1e-3, 1e-8, "outside", "coupled", "raw", 1e-2),
    "keras": AdamConvention(1e-3, 1e-7, "outside_raw", "decoupled", "raw", 4e-3),
}

#: The conventions (``tuple(adamfx.CONVENTIONS)`` names them), as Adam's rows.
#:
#: >>> import adamfx
#: >>> tuple(adamfx.CONVENTIONS), adamfx.CONVENTIONS["keras"].eps, adamfx.CONVENTIONS["torch"].adamw_weight_decay
#: (('optax', 'torch', 'keras'), 1e-07, 0.01)
CONVENTIONS = ADAM_CONVENTIONS


def adamw_weight_decay(weight_decay: Any, convention: str) -> Any:
    """``weight_decay``, or when it is ``None`` the convention's AdamW default (of every "...w" optimizer)."""
    return conventions.pick(weight_decay, conventions.lookup(ADAM_CONVENTIONS, convention).adamw_weight_decay)


@checks.porting_aids
@conventions.peer_options()
def adam(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float | None = None,
    *,
    eps_root: float = 0.0,
    weight_decay: float | None = None,
    amsgrad: bool = False,
    nesterov: bool = False,
    cautious: bool = False,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
    convention: str = "optax",
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    **options: Any,
) -> GradientTransformation:
    r"""Adam (Kingma & Ba, 2015, "Adam: A Method for Stochastic Optimization", Alg. 1).

    For step t = 1, 2, ... with gradient g_t::

        m_t  = b1 m_{t-1} + (1 - b1) g_t
        v_t  = b2 v_{t-1} + (1 - b2) |g_t|^2
        m^_t = m_t / (1 - b1^t),   v^_t = v_t / (1 - b2^t)
        lr_t = learning_rate(t - 1) / (1 + decay (t - 1))
        p_t  = p_{t-1} - lr_t m^_t / (sqrt(v^_t + eps_root) + eps)

    The source is that chain: ``scale_by_moments -> bias_correction -> normalize
    -> lr_decay``, with weight decay and AMSGrad's ``max_nu`` slotted in where the
    convention puts them.

    Conventions (same hyperparameters, the peer's trajectory):

    ==========  ============================  ===============  ===================  =====
    convention  eps added to                  weight_decay     AMSGrad max of       eps
    ==========  ============================  ===============  ===================  =====
    "optax"     sqrt(v^) (corrected)          coupled L2       corrected v^         1e-8
    "torch"     sqrt(v^) (corrected)          coupled L2       raw v                1e-8
    "keras"     sqrt(v) (raw: eps/sqrt(bc2))  decoupled        raw v                1e-7
    ==========  ============================  ===============  ===================  =====

    ``convention="torch"`` follows ``torch.optim.Adam``; ``"keras"`` follows
    ``keras.optimizers.Adam`` (where ``weight_decay`` is decoupled, ``p -= lr wd p``);
    ``"optax"`` follows ``optax.adam`` and ``optax.amsgrad`` (with ``weight_decay``
    as ``optax.add_decayed_weights`` before ``optax.adam``).

    Args:
      learning_rate: a number or a schedule ``count -> lr`` (optax schedules work).
      b1, b2: decay rates of the first and second moments, in [0, 1).
      eps: added to the root of the second moment; ``None`` takes the convention's default.
      eps_root: added inside the root (optax). Give it (e.g. 1e-16) to differentiate
        *through* the update (meta-learning): ``sqrt`` has no derivative at ``v = 0``.
      decay: legacy Keras inverse-time decay: ``lr / (1 + decay t)``, t from 0.
      weight_decay: coupled L2 or decoupled decay, as the convention says; a number, a
        schedule ``count -> weight_decay`` (optax's ``adamw``: read at the steps taken, from 0), or ``None``/0: none.
      weight_decay_mask: pytree of bools (or callable of params) selecting decayed leaves.
      decoupled: override the convention's meaning of ``weight_decay``.
      amsgrad: keep the running maximum of the second moment (Reddi et al., 2018).
      nesterov: optax's ``adam(nesterov=True)`` (= ``optax.nadam``): the look-ahead
        ``m^_t = b1 m_t / (1 - b1^(t+1)) + (1 - b1) g_t / (1 - b1^t)`` in place of
        ``m_t / (1 - b1^t)`` (:func:`adamfx.nesterov_momentum` with constant ``b1``). PyTorch's and
        Keras's Adam have no such option; every convention gives this same look-ahead (their Nadam,
        with its momentum schedule, is :func:`adamfx.nadam`).
      cautious: the Cautious mask (Liang et al., 2024; :func:`adamfx.cautious`): per leaf of d elements,
        the update ``u = m^ / (sqrt(v^) + eps)`` is kept where ``u g > 0`` and scaled by ``d / (nnz + 1)``
        (the paper's code; pytorch-optimizer's ``cautious=True`` on its other optimizers -- it has no cautious
        Adam), with ``g`` the gradient after a coupled L2 term; a decoupled weight decay is not masked. The
        same rule in every convention (no peer's Adam has it). Not elementwise: :func:`adamfx.fused` rejects it.
      bias_correction_mu, bias_correction_nu: ``False`` leaves that moment uncorrected (optax's
        ``amsgrad`` options; the AMSGrad paper corrects neither). Under every convention.
      maximize: ascend the objective (PyTorch's ``maximize``): the gradient is negated first,
        before a coupled weight decay, so the decay still pulls the weights towards zero.
      clipnorm: Keras's per-variable clipping, ``g <- g clipnorm / max(||g||, clipnorm)`` for each
        leaf on its own (:func:`adamfx.clip_by_norm_per_leaf`; *not* a global norm).
      clipvalue: Keras's ``clipvalue``, ``g <- clip(g, -clipvalue, clipvalue)`` (:func:`adamfx.clip_by_value`).
      global_clipnorm: Keras's ``global_clipnorm``: one norm over all leaves (:func:`adamfx.clip_by_global_norm`).
        At most one of the three clippings.
      loss_scale_factor: Keras's: the gradient is divided by it first (:func:`adamfx.unscale_loss`).
        These five act on the raw gradient, first in the chain and in Keras's order
        (``negate -> unscale_loss -> clip``), under every convention; ``None`` turns each off.
      convention: ``"optax"``, ``"torch"`` or ``"keras"``.
      mu_dtype, nu_dtype: how the moments are stored between steps: ``None`` (like the
        parameters, but float32 for float16 parameters, whose range cannot hold ``g^2``),
        a float dtype such as ``jnp.bfloat16`` (rounded stochastically when narrower than the maths),
        ``"int8"`` (8-bit block-wise), ``"factored"`` (``nu`` only: Adafactor's row/column means) or a storage object
        (:class:`adamfx.FloatStorage`, :class:`adamfx.Int8Storage`, :class:`adamfx.FactoredStorage`).

    Example:

    >>> import adamfx, jax, jax.numpy as jnp, optax
    >>> params = {"w": jnp.ones(3)}
    >>> tx = adamfx.adam(learning_rate=1e-3, convention="torch")
    >>> state = tx.init(params)
    >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
    >>> updates, state = tx.update(grads, state, params)
    >>> optax.apply_updates(params, updates)["w"]
    Array([0.999, 0.999, 0.999], dtype=float32)
    """
    conv = conventions.lookup(ADAM_CONVENTIONS, convention)
    conventions.require("adam", learning_rate=learning_rate, b1=b1, b2=b2)  # None is no default here
    if nesterov and not (bias_correction_mu and bias_correction_nu):
        raise ValueError(
            f"adam(nesterov=True, bias_correction_mu={bias_correction_mu!r}, bias_correction_nu="
            f"{bias_correction_nu!r}) is invalid: the Nesterov look-ahead corrects both moments."
        )
    maxed = [max_nu(nu_dtype=nu_dtype)] if amsgrad else []
    correction = nesterov_momentum(None) if nesterov else bias_correction(mu=bias_correction_mu, nu=bias_correction_nu)
    corrected = [correction, *maxed] if conv.amsgrad_on == "corrected" else [*maxed, correction]
    core = [
        scale_by_moments(b1, b2, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
        *corrected,
        normalize(conventions.pick(eps, conv.eps), eps_root=eps_root, eps_placement=conv.eps_placement),
    ]
    return conventions.finish(
        [cautious_stage(*core, rescale=conv.cautious_rescale)] if cautious else core,
        conv,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        **options,
    )


@checks.porting_aids
@conventions.peer_options(omit=("decoupled",))
def adamw(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float | None = None,
    weight_decay: float | None = None,
    *,
    eps_root: float = 0.0,
    amsgrad: bool = False,
    nesterov: bool = False,
    cautious: bool = False,
    convention: str = "optax",
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    **options: Any,
) -> GradientTransformation:
    """AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay.

    ``p_t = p_{t-1} - lr_t (m^_t / (sqrt(v^_t) + eps) + weight_decay p_{t-1})``.

    The default ``weight_decay`` is the convention's: 1e-4 for ``"optax"``
    (``optax.adamw``), 1e-2 for ``"torch"`` (``torch.optim.AdamW``), 4e-3 for
    ``"keras"`` (``keras.optimizers.AdamW``). ``weight_decay`` may be a schedule
    ``count -> weight_decay`` (optax's ``adamw``). ``nesterov=True`` is optax's
    ``adamw(nesterov=True)``, i.e. ``optax.nadamw``. Other arguments as :func:`adam`
    (optax's ``mask`` is ``weight_decay_mask``); ``cautious=True`` masks the Adam part, not the decay.

    >>> import adamfx, jax.numpy as jnp
    >>> tx, p = adamfx.adamw(1e-3, weight_decay=1e-2, convention="torch"), {"w": jnp.ones(2)}
    >>> g = jnp.array([0.5, -2.0])  # step 1: -lr (sign(g) + wd p)
    >>> [round(float(u), 6) for u in tx.update({"w": g}, tx.init(p), p)[0]["w"]]
    [-0.00101, 0.00099]
    """
    weight_decay = adamw_weight_decay(weight_decay, convention)
    return adam(
        learning_rate,
        b1,
        b2,
        eps,
        eps_root=eps_root,
        weight_decay=weight_decay,
        decoupled=True,
        amsgrad=amsgrad,
        nesterov=nesterov,
        cautious=cautious,
        convention=convention,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
        **options,
    )


@checks.porting_aids
@conventions.peer_options()
def amsgrad(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float | None = None,
    *,
    eps_root: float = 0.0,
    weight_decay: float | None = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
    convention: str = "optax",
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    **options: Any,
) -> GradientTransformation:
    """AMSGrad (Reddi et al., 2018): Adam with ``v`` replaced by its running maximum.

    PyTorch and Keras max the raw ``v`` and correct afterwards; optax maxes the
    corrected ``v^`` -- the trajectories differ, and ``convention`` picks one.
    optax's ``bias_correction_mu=False`` / ``bias_correction_nu=False`` leave that
    moment uncorrected (both ``False``: the AMSGrad paper's algorithm); they mean
    the same under every convention. Arguments as :func:`adam`.

    >>> import adamfx, jax.numpy as jnp
    >>> tx, p = adamfx.amsgrad(1e-3, convention="torch"), {"w": jnp.ones(2)}
    >>> g = jnp.array([0.5, -2.0])  # step 1: max(v_0, v_1) = v_1, so Adam's -lr sign(g)
    >>> [round(float(u), 6) for u in tx.update({"w": g}, tx.init(p), p)[0]["w"]]
    [-0.001, 0.001]
    """
    return adam(
        learning_rate,
        b1,
        b2,
        eps,
        eps_root=eps_root,
        weight_decay=weight_decay,
        amsgrad=True,
        bias_correction_mu=bias_correction_mu,
        bias_correction_nu=bias_correction_nu,
        convention=convention,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
        **options,
    )
