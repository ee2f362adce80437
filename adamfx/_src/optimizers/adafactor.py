"""Adafactor: a factored second moment, a relative step size and update clipping, in three conventions."""

from __future__ import annotations

from typing import Any, NamedTuple

from optax import ScalarOrSchedule

from adamfx._src.core import checks
from adamfx._src.core.base import GradientTransformation, chain
from adamfx._src.optimizers import conventions
from adamfx._src.stages.clipping import gradient_stages, negate
from adamfx._src.stages.decay_first import decay_first
from adamfx._src.stages.factored_rms import scale_by_factored_rms
from adamfx._src.stages.relative_step import relative_step_size
from adamfx._src.stages.update_average import ema_of_updates
from adamfx._src.stages.update_clipping import clip_by_block_rms
from adamfx._src.stages.weight_decay import add_decayed_weights, decoupled_weight_decay


class AdafactorConvention(NamedTuple):
    """How one peer writes Adafactor; each field picks a default or a composition."""

    learning_rate: float
    min_dim_size_to_factor: int  # factor a >= 2-D leaf when both its last two sides are >= this
    eps: float | None  # eps1; None: the parameter dtype's machine epsilon
    eps_placement: str  # "in_square": added to |g|^2; "clamp": floors on mean(r) and sqrt(v)
    relative_step: bool  # rho_t = min(lr_t, 1/sqrt(t)) (True) or lr_t
    weight_decay: str  # always decoupled from the gradient; its form is weight_decay_form
    weight_decay_form: str  # "added": s_t + wd p (no lr); "lr_scaled": p -= lr_t wd p; "first": that, before the step


ADAFACTOR_CONVENTIONS = {
    # optax.adafactor(learning_rate=None) applies no learning rate at all: 1.
    "optax": AdafactorConvention(1.0, 128, 1e-30, "in_square", False, "decoupled", "added"),
    "torch": AdafactorConvention(1e-2, 1, None, "clamp", True, "decoupled", "lr_scaled"),
    "keras": AdafactorConvention(1e-3, 1, 1e-30, "in_square", True, "decoupled", "first"),
}


@checks.porting_aids
@conventions.peer_options(omit=("decoupled",))  # the weight decay's form is the convention's (table)
def adafactor(
    learning_rate: ScalarOrSchedule | None = None,
    min_dim_size_to_factor: int | None = None,
    decay_rate: float = 0.8,
    clipping_threshold: float | None = 1.0,
    momentum: float | None = None,
    eps: float | None = None,
    eps_scale: float = 1e-3,
    relative_step: bool | None = None,
    multiply_by_parameter_scale: bool = True,
    *,
    weight_decay: float = 0.0,
    convention: str = "optax",
    mu_dtype: Any = None,
    **options: Any,
) -> GradientTransformation:
    r"""Adafactor (Shazeer & Stern, 2018, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", Alg. 4/5).

    For step t = 1, 2, ... with ``b2_t = 1 - t^(-decay_rate)``,
    ``lr_t = learning_rate(t - 1) / (1 + decay (t - 1))`` and ``RMS(x) = sqrt(mean(x^2))`` per leaf::

        x_t   = g_t^2 + eps1
        r_t   = b2_t r_{t-1} + (1 - b2_t) mean_j(x_t),  c_t = b2_t c_{t-1} + (1 - b2_t) mean_i(x_t)
        v^_t  = r_t c_t^T / mean_i(r_t)                 (factored leaves; others: the EMA of x_t)
        u_t   = g_t / sqrt(v^_t)
        u^_t  = u_t / max(1, RMS(u_t) / clipping_threshold)                update clipping
        rho_t = min(lr_t, 1 / sqrt(t))                  (relative_step; else lr_t)
        s_t   = max(eps_scale, RMS(p_{t-1})) rho_t u^_t  (multiply_by_parameter_scale; else rho_t u^_t)
        m_t   = momentum m_{t-1} + (1 - momentum) s_t   (momentum given; s_t <- m_t)
        p_t   = p_{t-1} - s_t - weight decay (see the table)

    The chain is ``scale_by_factored_rms -> clip_by_block_rms -> relative_step_size
    -> [ema_of_updates] -> [weight decay] -> negate``, the weight decay placed as
    the convention says (the paper's step is with ``learning_rate=1e-2``, the
    torch default).

    ==========================  ===========  ================  ===================  ==================
    difference                  "optax"      "torch"           "keras"              Shazeer & Stern
    ==========================  ===========  ================  ===================  ==================
    learning_rate default       none (1)     1e-2              1e-3                 --
    relative_step default       False        True (always)     True (always, a)     rho_t cap 1e-2
    factored leaves             both last    every >= 2-D      every >= 2-D         matrices
                                two >= 128   (last two axes)   (last two axes)
    eps1 default                1e-30        finfo(p).eps      1e-30                1e-30
    eps_placement of eps1       in_square    clamp (b)         in_square            in_square
    parameter scale             optional     always            always               yes
    update clipping             optional     always (d >= 1)   always               d = 1
    momentum                    optional     none              none                 b1 optional
    weight_decay                u += wd p    p -= lr_t wd p    p -= lr_t wd p       --
                                (no lr)      (RMS of p_{t-1})  first (RMS of that)
    float32 inside a float64    b2_t         nothing           ops.mean (r, c,      --
    run                                                        RMS(p), RMS(u))
    ==========================  ===========  ================  ===================  ==================

    (a) Keras's ``relative_step`` flag changes nothing: its step is always
    ``min(lr_t, 1/sqrt(t))``; ``relative_step=False`` here takes ``rho_t = lr_t``.
    PyTorch and Keras have no switch for the parameter scale, update clipping
    off or momentum: those options follow optax's composition in every convention.
    ``"in_square"``: ``x_t = g_t^2 + eps1`` as above.
    (b) ``"clamp"``, PyTorch: ``x_t = g_t^2``, ``v^_t = r c^T / max(mean(r), eps1)``,
    ``u_t = g_t / max(sqrt(v^_t), eps1)``.
    Factoring a side of length 1 (PyTorch and Keras factor ``(n, 1)`` leaves)
    gives the full moment exactly, so adamfx keeps such leaves whole; optax factors
    the two *largest* axes of a leaf with more than two dimensions, adamfx the
    last two. optax computes ``b2_t`` in float32 even under x64 (a relative error
    of ~1e-8 in ``1 - b2_t``), and Keras's ``ops.mean`` promotes float64 to float32;
    adamfx computes in the state's dtype. optax keeps the
    momentum in float32 (``dtype_momentum``); adamfx like the parameter
    (``mu_dtype=jnp.float32`` for optax's).

    Args:
      learning_rate: a number or a schedule ``count -> lr``; ``None`` takes the convention's default.
      min_dim_size_to_factor: factor a leaf when its last two sides are both at least this (int >= 1).
      decay_rate: the exponent of ``b2_t = 1 - t^(-decay_rate)`` (torch's ``-beta2_decay``).
      clipping_threshold: ``d`` of the update clipping, >= 1; ``None`` turns it off.
      momentum: the rate of the moving average of the steps; ``None`` keeps none.
      eps: ``eps1``; ``None`` takes the convention's default.
      eps_scale: ``eps2``, the floor of the parameter scale.
      relative_step: ``rho_t = min(lr_t, 1/sqrt(t))``; ``None`` takes the convention's default.
      multiply_by_parameter_scale: multiply the step by ``max(eps_scale, RMS(p))``.
      weight_decay: its form is the convention's (table); ``weight_decay_mask`` selects the leaves.
      convention: ``"optax"``, ``"torch"`` or ``"keras"``.
      mu_dtype: storage of the momentum (default: the parameter dtype).
      options: ``weight_decay_mask``, ``decay``, ``maximize``, ``clipnorm``, ``clipvalue``,
        ``global_clipnorm``, ``loss_scale_factor``, as :func:`adamfx.sgd` (no ``decoupled``: see the table).

    The first step of a vector ``g = (3, 4)`` from ``p = (1, 1)``: ``v^ = g^2``,
    ``u = (1, 1)``, ``rho_1 = min(1e-2, 1) = 1e-2``, ``RMS(p) = 1``:

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.adafactor(convention="torch")
    >>> p = jnp.ones(2)
    >>> updates, _ = tx.update(jnp.array([3.0, 4.0]), tx.init(p), p)
    >>> updates.tolist()
    [-0.009999999776482582, -0.009999999776482582]
    """
    conv = conventions.lookup(ADAFACTOR_CONVENTIONS, convention)
    decay, mask = options.pop("decay"), options.pop("weight_decay_mask")
    conventions.require("adafactor", decay_rate=decay_rate, eps_scale=eps_scale, weight_decay=weight_decay, decay=decay)
    min_dim = conventions.pick(min_dim_size_to_factor, conv.min_dim_size_to_factor)
    if isinstance(min_dim, bool) or not isinstance(min_dim, int) or min_dim < 1:
        raise ValueError(f"min_dim_size_to_factor={min_dim!r} is invalid: it must be an int >= 1.")
    lr = conventions.pick(learning_rate, conv.learning_rate)
    eps1 = conventions.pick(eps, conv.eps)
    step = [
        scale_by_factored_rms(decay_rate, eps1, eps_placement=conv.eps_placement, min_dim_size=max(2, min_dim)),
        *([] if clipping_threshold is None else [clip_by_block_rms(clipping_threshold)]),
        relative_step_size(
            lr,
            relative=conventions.pick(relative_step, conv.relative_step),
            parameter_scale=multiply_by_parameter_scale,
            eps_scale=eps_scale,
            decay=decay,
        ),
        *([] if momentum is None else [ema_of_updates(momentum, mu_dtype=mu_dtype)]),
    ]
    # Not conventions.finish: its last stage is -lr_t, and Adafactor's step min(lr_t, 1/sqrt(t)) RMS(p)
    # is not a factor shared with the weight decay. The weight-decay stage is kept at 0 too: the state's
    # structure must not depend on its value (optax.inject_hyperparams passes the default 0.0 as an array).
    gradient = gradient_stages(**options)
    if conv.weight_decay_form == "added":  # optax: s_t + wd p, then the sign
        return chain(*gradient, *step, add_decayed_weights(weight_decay, mask), negate())
    if conv.weight_decay_form == "lr_scaled":  # PyTorch: p_t = p - s_t - lr_t wd p
        return chain(*gradient, *step, negate(), decoupled_weight_decay(weight_decay, lr, decay, mask))
    # Keras: p' = p - lr_t wd p before the step, whose parameter scale reads p'
    return chain(*gradient, decay_first(chain(*step, negate()), weight_decay, lr, decay, mask))
