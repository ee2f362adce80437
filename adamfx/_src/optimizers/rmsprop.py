"""RMSprop and Adadelta: the second moment alone, in three conventions."""

from __future__ import annotations

from typing import Any, NamedTuple

from optax import ScalarOrSchedule

from adamfx._src.core import checks
from adamfx._src.core.base import GradientTransformation
from adamfx._src.optimizers import conventions
from adamfx._src.stages.moment_forms import center, update_rms
from adamfx._src.stages.moments import bias_correction as correct_moments
from adamfx._src.stages.moments import normalize, scale_by_moments
from adamfx._src.stages.momentum import trace


class RmspropConvention(NamedTuple):
    """How one peer writes RMSprop; each field picks a default or a composition."""

    learning_rate: float
    rho: float
    eps: float
    eps_placement: str  # "inside": sqrt(v + eps) (Keras, optax) or "outside": sqrt(v) + eps (PyTorch)
    lr_inside: bool  # the momentum buffer holds -lr_t g / sqrt(v) (Keras, optax)
    weight_decay: str  # "coupled" L2 or "decoupled"
    nesterov_needs_momentum: bool  # nesterov=True with momentum 0 is an error, else plain RMSprop (optax)


RMSPROP_CONVENTIONS = {
    "optax": RmspropConvention(1e-2, 0.9, 1e-8, "inside", True, "coupled", False),  # no default lr in optax: PyTorch's
    "torch": RmspropConvention(1e-2, 0.99, 1e-8, "outside", False, "coupled", True),
    "keras": RmspropConvention(1e-3, 0.9, 1e-7, "inside", True, "decoupled", False),
}


@checks.porting_aids
@conventions.peer_options()
def rmsprop(
    learning_rate: ScalarOrSchedule | None = None,
    rho: float | None = None,
    eps: float | None = None,
    centered: bool = False,
    momentum: float | None = None,
    nesterov: bool = False,
    *,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool | None = None,
    bias_correction: bool = False,
    weight_decay: float | None = None,
    convention: str = "optax",
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    **options: Any,
) -> GradientTransformation:
    r"""RMSprop (Tieleman & Hinton, 2012; centered: Graves, 2013).

    For step t = 1, 2, ... with gradient g_t and ``lr_t = learning_rate(t - 1) / (1 + decay (t - 1))``::

        v_t = rho v_{t-1} + (1 - rho) |g_t|^2
        m_t = rho m_{t-1} + (1 - rho) g_t,   s_t = v_t - |m_t|^2   (centered; else s_t = v_t)
        d_t = g_t / (sqrt(s_t) + eps)   (PyTorch)   or   g_t / sqrt(s_t + eps)   (Keras, optax)
        p_t = p_{t-1} - lr_t d_t                                      (no momentum)
        b_t = momentum b_{t-1} + d_t,        p_t = p_{t-1} - lr_t b_t (PyTorch)
        b_t = momentum b_{t-1} + lr_t d_t,   p_t = p_{t-1} - b_t      (Keras, optax)

    The chain is ``scale_by_moments(b1=rho if centered, b2=rho) -> [bias_correction] -> [center] ->
    normalize -> [trace] -> lr_decay`` (the trace after ``lr_decay`` for Keras
    and optax, whose buffer holds the learning rate).

    ==========  ========  =====  =====  ================  ============  ============
    convention  lr        rho    eps    eps placement     lr in buffer  weight_decay
    ==========  ========  =====  =====  ================  ============  ============
    "optax"     1e-2 (*)  0.9    1e-8   inside the root   yes           coupled L2
    "torch"     1e-2      0.99   1e-8   outside the root  no            coupled L2
    "keras"     1e-3      0.9    1e-7   inside the root   yes           decoupled
    ==========  ========  =====  =====  ================  ============  ============

    (*) ``optax.rmsprop`` has no default learning rate; adamfx uses PyTorch's.
    ``rho`` is PyTorch's ``alpha`` and optax's ``decay``; here ``decay`` keeps
    its one meaning, the legacy Keras learning-rate decay (a ``decay`` of 0.5 or
    more, surely meant as ``rho``, warns). ``nesterov`` is
    optax's (PyTorch and Keras have none): with momentum 0 it is plain RMSprop
    under ``"optax"`` and ``"keras"`` (optax's rule) and a ``ValueError`` under
    ``"torch"``. optax's ``initial_scale``, ``eps_in_sqrt`` and ``bias_correction``
    mean the same under every convention. ``rho`` is one hyperparameter
    in the state (``set_hyperparams(rho=...)``), shared by both moments.

    Args:
      learning_rate: a number or a schedule ``count -> lr``; ``None`` takes the convention's default.
      rho: the moving-average rate of the moments, in [0, 1); ``None`` takes the convention's.
      eps: ``None`` takes the convention's default.
      centered: divide by the root of the gradient's variance instead of its second moment.
      momentum: rate of the momentum buffer in [0, 1]; ``None`` or 0 keeps no buffer.
      nesterov: Nesterov momentum on that buffer.
      initial_scale: ``v_0`` (optax's ``initial_scale``; the centered ``m_0`` stays 0).
      eps_in_sqrt: ``True``: ``sqrt(s_t + eps)``, ``False``: ``sqrt(s_t) + eps`` (optax's option;
        PyTorch is ``False``); ``None`` takes the convention's placement.
      bias_correction: divide ``v_t`` (and the centered ``m_t``) by ``1 - rho^t`` before use
        (optax's option; :func:`adamfx.bias_correction`).
      weight_decay, weight_decay_mask, decoupled, decay, convention: as :func:`adamfx.sgd`.
      maximize, clipnorm, clipvalue, global_clipnorm, loss_scale_factor: as :func:`adamfx.sgd`.
      mu_dtype: storage of the gradient average (centered) and the momentum buffer.
      nu_dtype: storage of the second moment.

    >>> import adamfx, jax.numpy as jnp
    >>> tx, p = adamfx.rmsprop(1e-3, centered=True, momentum=0.9, convention="keras"), {"w": jnp.ones(2)}
    >>> g = jnp.array([0.5, -2.0])  # step 1: -lr g / sqrt(0.1 g^2 - (0.1 g)^2) = -lr sign(g) / 0.3
    >>> [round(float(u), 6) for u in tx.update({"w": g}, tx.init(p), p)[0]["w"]]
    [-0.003333, 0.003333]
    """
    conv = conventions.lookup(RMSPROP_CONVENTIONS, convention)
    conventions.warn_if_rho("rmsprop", options["decay"])
    rho = conventions.pick(rho, conv.rho)
    if centered and any(isinstance(spec, str) for spec in (mu_dtype, nu_dtype)):
        raise ValueError(
            f"rmsprop(centered=True, mu_dtype={mu_dtype!r}, nu_dtype={nu_dtype!r}) is invalid: the centered "
            "variance v - |m|^2 cancels catastrophically with 8-bit or factored moments (it diverges); "
            "use float moments (None, jnp.bfloat16, jnp.float32) with centered=True."
        )
    moments = scale_by_moments(
        rho if centered else None,
        rho,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
        names=("rho", "rho"),
        initial_nu=initial_scale,
    )
    nesterov = conventions.effective_nesterov(nesterov, momentum, conv)
    keep_buffer = nesterov or not checks.is_static_zero(momentum)  # a JAX array (inject_hyperparams) keeps it
    buffer = [trace(conventions.pick(momentum, 0.0), 0.0, nesterov, mu_dtype=mu_dtype)] if keep_buffer else []
    placement = conv.eps_placement if eps_in_sqrt is None else ("inside" if eps_in_sqrt else "outside")
    root = normalize(conventions.pick(eps, conv.eps), eps_placement=placement)
    corrected = [correct_moments()] if bias_correction else []
    return conventions.finish(
        [moments, *corrected, *([center()] if centered else []), root],
        conv,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        momentum=buffer,
        lr_inside=conv.lr_inside,
        **options,
    )


class AdadeltaConvention(NamedTuple):
    """How one peer writes Adadelta: the formula is the same, the defaults differ."""

    learning_rate: float
    rho: float
    eps: float
    weight_decay: str  # "coupled" L2 or "decoupled"


ADADELTA_CONVENTIONS = {
    "optax": AdadeltaConvention(1.0, 0.9, 1e-6, "coupled"),  # optax's default lr None flips the sign: PyTorch's
    "torch": AdadeltaConvention(1.0, 0.9, 1e-6, "coupled"),
    "keras": AdadeltaConvention(1e-3, 0.95, 1e-7, "decoupled"),
}


@checks.porting_aids
@conventions.peer_options()
def adadelta(
    learning_rate: ScalarOrSchedule | None = None,
    rho: float | None = None,
    eps: float | None = None,
    *,
    weight_decay: float | None = None,
    convention: str = "optax",
    nu_dtype: Any = None,
    **options: Any,
) -> GradientTransformation:
    r"""Adadelta (Zeiler, 2012, Alg. 1), scaled by a learning rate as PyTorch, Keras and optax do.

    For step t = 1, 2, ... with gradient g_t and ``lr_t = learning_rate(t - 1) / (1 + decay (t - 1))``::

        v_t = rho v_{t-1} + (1 - rho) |g_t|^2
        d_t = sqrt(w_{t-1} + eps) / sqrt(v_t + eps) g_t
        w_t = rho w_{t-1} + (1 - rho) |d_t|^2
        p_t = p_{t-1} - lr_t d_t

    The chain is ``scale_by_moments(b1=None, b2=rho) -> normalize(eps, eps_placement="inside")
    -> update_rms(rho, eps) -> lr_decay``. The three peers share the formula;
    the conventions differ in defaults and weight decay:

    ==========  ========  =====  =====  ============
    convention  lr        rho    eps    weight_decay
    ==========  ========  =====  =====  ============
    "optax"     1.0 (*)   0.9    1e-6   coupled L2
    "torch"     1.0       0.9    1e-6   coupled L2
    "keras"     1e-3      0.95   1e-7   decoupled
    ==========  ========  =====  =====  ============

    (*) ``optax.adadelta`` defaults to ``learning_rate=None``, which skips the
    ``-lr`` scaling and so steps *up* the gradient; adamfx uses PyTorch's 1.0.
    ``rho`` and ``eps`` are each one hyperparameter in the state (shared by both roots).

    Args:
      learning_rate: a number or a schedule ``count -> lr``; ``None`` takes the convention's default.
      rho: rate of both moving averages, in [0, 1); ``None`` takes the convention's.
      eps: inside both roots; ``None`` takes the convention's default.
      weight_decay, weight_decay_mask, decoupled, decay, convention: as :func:`adamfx.sgd`
        (``weight_decay`` may be a schedule, as in optax's ``adadelta``).
      maximize, clipnorm, clipvalue, global_clipnorm, loss_scale_factor: as :func:`adamfx.sgd`.
      nu_dtype: storage of both averages.

    >>> import adamfx, jax.numpy as jnp
    >>> tx, p = adamfx.adadelta(convention="torch"), {"w": jnp.ones(2)}
    >>> g = jnp.array([0.5, -2.0])  # step 1: -sqrt(eps) g / sqrt(0.1 g^2), eps = 1e-6
    >>> [round(float(u), 6) for u in tx.update({"w": g}, tx.init(p), p)[0]["w"]]
    [-0.003162, 0.003162]
    """
    conv = conventions.lookup(ADADELTA_CONVENTIONS, convention)
    conventions.warn_if_rho("adadelta", options["decay"])
    rho, eps = conventions.pick(rho, conv.rho), conventions.pick(eps, conv.eps)
    return conventions.finish(
        [
            scale_by_moments(None, rho, nu_dtype=nu_dtype, names=("rho", "rho")),
            normalize(eps, eps_placement="inside"),
            update_rms(rho, eps, nu_dtype=nu_dtype),
        ],
        conv,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        **options,
    )
