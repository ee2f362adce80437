"""Schedule-Free AdamW and SGD (Defazio et al., 2024), in the conventions of optax, schedulefree and Keras."""

from __future__ import annotations

from typing import Any, NamedTuple

from optax import ScalarOrSchedule

from adamfx._src.core import checks
from adamfx._src.core.base import GradientTransformation, chain
from adamfx._src.optimizers import conventions
from adamfx._src.stages.clipping import gradient_stages
from adamfx._src.stages.decay_first import decay_first
from adamfx._src.stages.moments import bias_correction, normalize, scale_by_moments
from adamfx._src.stages.schedule_free import schedule_free
from adamfx._src.stages.weight_decay import add_decayed_weights


class ScheduleFreeConvention(NamedTuple):
    """How one peer writes schedule-free; each field picks a default or a composition."""

    learning_rate: float  # the default, as the signatures fix it (0.0025 AdamW, 1.0 SGD; None is refused)
    weight_decay: str  # "decoupled" from the normalization (AdamW) or "coupled" (SGD: d = g + wd y)
    weight_lr_power: float  # default power of lr_max in the averaging weights (Keras: 0, i.e. c_t = 1/t)
    warmup_shift: int  # z-step warmup min((t - 1 + shift) / W, 1): 0 = optax ((t-1)/W), 1 = t/W
    weights_ahead: bool  # the averaging weights read the lr of step t + 1 (optax's schedule(step_count))
    decay_at: str  # "y": d += wd y before the z step; "before_step": y -= lr wd y first (Keras)


SCHEDULE_FREE_CONVENTIONS = {
    "optax": ScheduleFreeConvention(0.0025, "decoupled", 2.0, 0, True, "y"),
    "torch": ScheduleFreeConvention(0.0025, "decoupled", 2.0, 1, False, "y"),
    "keras": ScheduleFreeConvention(0.0025, "decoupled", 0.0, 1, False, "before_step"),
}
# No Keras schedule-free SGD: the peers are optax.contrib.schedule_free_sgd and schedulefree's SGDScheduleFree.
SCHEDULE_FREE_SGD_CONVENTIONS = {
    "optax": ScheduleFreeConvention(1.0, "coupled", 2.0, 0, True, "y"),
    "torch": ScheduleFreeConvention(1.0, "coupled", 2.0, 1, False, "y"),
}


def _finish(core, conv, *, weight_decay, weight_decay_mask, learning_rate, decay, **gradient_options):
    """``gradient [decay at y] core`` or Keras's ``decay_first(gradient core)``.

    The weight decay stage is kept also for ``weight_decay=0`` (as optax does): the state's
    structure must not depend on a value that ``set_hyperparams`` or ``inject_hyperparams`` may change.
    """
    steps = [*gradient_stages(**gradient_options)]
    if conv.decay_at == "y":
        return chain(*steps, *core[:-1], add_decayed_weights(weight_decay, weight_decay_mask), core[-1])
    return decay_first(chain(*steps, *core), weight_decay, learning_rate, decay, weight_decay_mask)


def _averaging(conv, learning_rate, b1, warmup_steps, weight_lr_power, decay, z_dtype):
    return schedule_free(
        learning_rate,
        b1,
        warmup_steps=conventions.pick(warmup_steps, 0),
        weight_lr_power=conventions.pick(weight_lr_power, conv.weight_lr_power),
        decay=decay,
        warmup_shift=conv.warmup_shift,
        weights_ahead=conv.weights_ahead,
        z_dtype=z_dtype,
    )


@checks.porting_aids
@conventions.peer_options(omit=("decoupled",))
def schedule_free_adamw(
    learning_rate: ScalarOrSchedule = 0.0025,
    warmup_steps: float | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_lr_power: float | None = None,
    *,
    convention: str = "optax",
    nu_dtype: Any = None,
    z_dtype: Any = None,
    **options: Any,
) -> GradientTransformation:
    r"""Schedule-Free AdamW (Defazio et al., 2024, "The Road Less Scheduled", Alg. 1).

    For step t = 1, 2, ... with ``y_t`` the params (where the gradient ``g_t`` is taken)::

        v_t     = b2 v_{t-1} + (1 - b2) g_t^2
        d_t     = g_t / (sqrt(v_t / (1 - b2^t)) + eps) + wd y_t
        lr_t    = learning_rate(t - 1) min(t / W, 1)           (warmup over W = warmup_steps)
        z_{t+1} = z_t - lr_t d_t
        c_{t+1} = lr_max,t^p / sum_{i<=t} lr_max,i^p           (p = weight_lr_power)
        x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1}           (evaluate here)
        y_{t+1} = b1 x_{t+1} + (1 - b1) z_{t+1}

    The chain is ``scale_by_moments(b1=None) -> bias_correction -> normalize ->
    add_decayed_weights -> schedule_free``; there is no first moment (``b1`` is the
    interpolation of y between x and z). The params returned after each step are
    ``y``; :func:`adamfx.schedule_free_eval_params` gives ``x`` (PyTorch's ``optimizer.eval()``).

    **Memory per parameter**: ``z`` and ``v``, two parameter-sized buffers, as AdamW's
    ``m`` and ``v`` (``x`` is rebuilt from ``y`` and ``z``, not stored); ``nu_dtype``
    stores ``v`` (bfloat16, int8, factored) and ``z_dtype`` stores ``z`` (a float dtype).
    State scalars: the step, ``lr_max``, ``weight_sum``.

    The peers differ (optax.contrib 0.2.8, schedulefree 1.4.1 ``AdamWScheduleFree``, Keras 3.15
    ``ScheduleFreeAdamW``); each row is a composition of the same stages:

    ==========  ===============  =============  ====================  ======================================
    convention  weight_lr_power  z-step warmup  averaging weight c    weight decay
    ==========  ===============  =============  ====================  ======================================
    "optax"     2.0              (t - 1) / W    lr read at t + 1 (*)  d += wd y (at y), times lr_t
    "torch"     2.0              t / W          lr_t                  d += wd y (at y), times lr_t
    "keras"     0.0: c = 1 / t   t / W          1 / t                 y -= lr wd y before the step (**)
    ==========  ===============  =============  ====================  ======================================

    (*) optax builds ``warmup_constant_schedule(0, lr, W)``: the base optimizer reads it at
    ``t - 1`` (its first z step is zero), the averaging at ``t`` (``schedule_free_adamw``'s
    ``step_count`` starts at 1); a schedule given as ``learning_rate`` is read the same two ways.
    (**) Keras's ``weight_decay`` decays the variable with the un-warmed learning rate before
    ``update_step`` (:func:`adamfx.decay_first`), which rebuilds x from the decayed y; its
    d is the normalized gradient alone. Keras has no ``weight_lr_power``: its c_t is ``1 / t``.
    All three: ``v`` bias-corrected, ``eps_placement="outside"`` (``sqrt(v / (1 - b2^t)) + eps``),
    ``lr_max`` starting at 0 (schedulefree's -1 is the same for ``lr >= 0``), ``c = 0`` while
    ``sum w = 0``. schedulefree before 1.3 (now ``AdamWScheduleFreePaper``, and the paper's Alg. 1)
    instead scaled the learning rate by ``sqrt(1 - b2^t)`` -- its weight decay and averaging
    weights too -- and put eps on the raw root; 1.3 moved the correction into ``v``, which
    every convention here follows. schedulefree computes ``y`` in place as
    ``lerp(y, z, c) + lr (b1 (1 - c) - 1) d`` (as adamfx does), optax and Keras through ``x``.

    Args:
      learning_rate: a number or a schedule ``count -> lr`` (read at ``t - 1``); warmup multiplies it.
      warmup_steps: W, the length of the linear warmup (``None`` or 0: none).
      b1: the interpolation ``y = b1 x + (1 - b1) z`` (schedulefree's beta1/momentum), in [0, 1).
      b2, eps: the second moment's rate and the denominator's eps.
      weight_decay: evaluated at ``y`` (Keras: decays ``y`` before the step), times ``lr_t``.
      weight_lr_power: p in the averaging weights ``lr_max^p``; ``None``: the convention's.
      weight_decay_mask, decay, convention: as :func:`adamfx.sgd`.
      maximize, clipnorm, clipvalue, global_clipnorm, loss_scale_factor: as :func:`adamfx.sgd`.
      nu_dtype: storage of ``v``; z_dtype: storage of ``z`` (a float dtype; default like the params).

    The first update of a gradient 0.5 at lr 0.1 with a 2-step warmup: optax's first z step is
    zero, schedulefree's is ``lr / 2`` (and c_1 = 1, so ``y_2 = z_2``):

    >>> import adamfx, jax.numpy as jnp
    >>> params, grads = {"w": jnp.array([1.0])}, {"w": jnp.array([0.5])}
    >>> for convention in ("optax", "torch"):
    ...     tx = adamfx.schedule_free_adamw(0.1, warmup_steps=2, convention=convention)
    ...     updates, state = tx.update(grads, tx.init(params), params)
    ...     print(convention, updates["w"])
    optax [0.]
    torch [-0.05]
    """
    conv = conventions.lookup(SCHEDULE_FREE_CONVENTIONS, convention)
    conventions.require(
        "schedule_free_adamw", learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay
    )
    core = [
        scale_by_moments(None, b2, nu_dtype=nu_dtype),
        bias_correction(),
        normalize(eps, eps_placement="outside"),
        _averaging(conv, learning_rate, b1, warmup_steps, weight_lr_power, options["decay"], z_dtype),
    ]
    return _finish(core, conv, learning_rate=learning_rate, weight_decay=weight_decay, **options)


@checks.porting_aids
@conventions.peer_options(omit=("decoupled",))
def schedule_free_sgd(
    learning_rate: ScalarOrSchedule = 1.0,
    warmup_steps: float | None = None,
    b1: float = 0.9,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_lr_power: float = 2.0,
    *,
    convention: str = "optax",
    z_dtype: Any = None,
    **options: Any,
) -> GradientTransformation:
    r"""Schedule-Free SGD (Defazio et al., 2024, "The Road Less Scheduled").

    :func:`schedule_free_adamw` with ``d_t = g_t + wd y_t`` (no second moment): the
    chain is ``add_decayed_weights -> schedule_free``. ``b1`` is schedulefree's
    ``momentum``. **Memory per parameter**: ``z`` alone, one parameter-sized buffer
    (as SGD's momentum buffer). Conventions "optax" and "torch" (Keras has no
    schedule-free SGD); they differ as in :func:`schedule_free_adamw`'s table.

    Args:
      learning_rate, warmup_steps, weight_lr_power, z_dtype: as :func:`schedule_free_adamw`.
      b1: the interpolation ``y = b1 x + (1 - b1) z`` (schedulefree's ``momentum``).
      weight_decay: ``d = g + wd y`` (optax: ``add_decayed_weights`` before ``sgd``; schedulefree: at y).
      weight_decay_mask, decay, convention: as :func:`adamfx.sgd`.
      maximize, clipnorm, clipvalue, global_clipnorm, loss_scale_factor: as :func:`adamfx.sgd`.

    The first step has ``c_1 = 1``, so the params land on ``z_2 = y_1 - lr g``:

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.schedule_free_sgd(0.5, convention="torch")
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> updates, state = tx.update({"w": jnp.array([1.0, 2.0])}, tx.init(params), params)
    >>> updates["w"]
    Array([-0.5, -1. ], dtype=float32)
    """
    conv = conventions.lookup(SCHEDULE_FREE_SGD_CONVENTIONS, convention)
    conventions.require(
        "schedule_free_sgd",
        learning_rate=learning_rate,
        b1=b1,
        weight_decay=weight_decay,
        weight_lr_power=weight_lr_power,
    )
    core = [_averaging(conv, learning_rate, b1, warmup_steps, weight_lr_power, options["decay"], z_dtype)]
    return _finish(core, conv, learning_rate=learning_rate, weight_decay=weight_decay, **options)
