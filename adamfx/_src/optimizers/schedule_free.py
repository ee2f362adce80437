"""Schedule-Free AdamW and SGD (Defazio et al., 2024), in the conventions of optax, schedulefree and Keras."""

from __future__ import annotations

from typing import Any, NamedTuple

from adamfx._src.core import checks
from adamfx._src.core.base import GradientTransformation, chain
from adamfx._src.optimizers import conventions
from adamfx._src.stages.clipping import gradient_stages
from adamfx._src.stages.lr_and_decay import add_decayed_weights
from adamfx._src.stages.moments import bias_correction, normalize, scale_by_moments
from adamfx._src.stages.schedule_free import decay_before_step, schedule_free


class ScheduleFreeConvention(NamedTuple):
    """How one peer writes schedule-free; each field picks a default or a composition."""

    weight_lr_power: float  # default power of lr_max in the averaging weights (Keras: 0, i.e. c_t = 1/t)
    warmup_shift: int  # z-step warmup min((t - 1 + shift) / W, 1): 0 = optax ((t-1)/W), 1 = t/W
    weights_ahead: bool  # the averaging weights read the lr of step t + 1 (optax's schedule(step_count))
    weight_decay: str  # "at_y": d += wd y before the z step; "before_step": y -= lr wd y first (Keras)


SCHEDULE_FREE_CONVENTIONS = {
    "optax": ScheduleFreeConvention(2.0, 0, True, "at_y"),
    "torch": ScheduleFreeConvention(2.0, 1, False, "at_y"),
    "keras": ScheduleFreeConvention(0.0, 1, False, "before_step"),
}
# No Keras schedule-free SGD: the peers are optax.contrib.schedule_free_sgd and schedulefree's SGDScheduleFree.
SCHEDULE_FREE_SGD_CONVENTIONS = {name: SCHEDULE_FREE_CONVENTIONS[name] for name in ("optax", "torch")}

_TABLE = """
    ==========  ==============  ================  ===================  ======================================
    convention  weight_lr_power z-step warmup      averaging weight     weight decay
    ==========  ==============  ================  ===================  ======================================
    "optax"     2.0             (t - 1) / W (*)   lr_max(lr_{t+1})^2   d += wd y, times lr_t (at y)
    "torch"     2.0             t / W             lr_max(lr_t)^2       d += wd y, times lr_t (at y)
    "keras"     0.0 (c = 1/t)   t / W             1 (c_t = 1 / t)      y -= lr wd y before the step (**)
    ==========  ==============  ================  ===================  ======================================

    (*) optax's warmup is ``warmup_constant_schedule(0, lr, W)`` read by the base optimizer at
    t - 1 (its first z step is zero) and by the averaging at t. (**) Keras's ``weight_decay``
    decays the variable with the un-warmed learning rate before ``update_step``, which then
    rebuilds x from the decayed y; d is the normalized gradient alone.
"""


def _finish(core, conv, *, weight_decay, weight_decay_mask, learning_rate, decay, **gradient_options):
    """``gradient [decay at y] core`` or Keras's ``decay_before_step(gradient core)``.

    The weight decay stage is kept also for ``weight_decay=0`` (as optax does): the state's
    structure must not depend on a value that ``set_hyperparams`` or ``inject_hyperparams`` may change.
    """
    steps = [*gradient_stages(**gradient_options)]
    if conv.weight_decay == "at_y":
        return chain(*steps, *core[:-1], add_decayed_weights(weight_decay, weight_decay_mask), core[-1])
    return decay_before_step(chain(*steps, *core), weight_decay, learning_rate, decay, weight_decay_mask)


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
def schedule_free_adamw(
    learning_rate: Any = 0.0025,
    warmup_steps: float | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: Any = 0.0,
    weight_lr_power: float | None = None,
    *,
    weight_decay_mask: Any = None,
    decay: float = 0.0,
    maximize: bool = False,
    clipnorm: float | None = None,
    clipvalue: float | None = None,
    global_clipnorm: float | None = None,
    loss_scale_factor: float | None = None,
    convention: str = "optax",
    nu_dtype: Any = None,
    z_dtype: Any = None,
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
    """
    conv = conventions.lookup(SCHEDULE_FREE_CONVENTIONS, convention)
    conventions.require("schedule_free_adamw", b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    core = [
        scale_by_moments(None, b2, nu_dtype=nu_dtype),
        bias_correction(),
        normalize(eps),
        _averaging(conv, learning_rate, b1, warmup_steps, weight_lr_power, decay, z_dtype),
    ]
    return _finish(
        core,
        conv,
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
        learning_rate=learning_rate,
        decay=decay,
        maximize=maximize,
        loss_scale_factor=loss_scale_factor,
        clipnorm=clipnorm,
        clipvalue=clipvalue,
        global_clipnorm=global_clipnorm,
    )


@checks.porting_aids
def schedule_free_sgd(
    learning_rate: Any = 1.0,
    warmup_steps: float | None = None,
    b1: float = 0.9,
    weight_decay: Any = 0.0,
    weight_lr_power: float = 2.0,
    *,
    weight_decay_mask: Any = None,
    decay: float = 0.0,
    maximize: bool = False,
    clipnorm: float | None = None,
    clipvalue: float | None = None,
    global_clipnorm: float | None = None,
    loss_scale_factor: float | None = None,
    convention: str = "optax",
    z_dtype: Any = None,
) -> GradientTransformation:
    r"""Schedule-Free SGD (Defazio et al., 2024, "The Road Less Scheduled").

    :func:`schedule_free_adamw` with ``d_t = g_t + wd y_t`` (no second moment): the
    chain is ``add_decayed_weights -> schedule_free``. ``b1`` is schedulefree's
    ``momentum``. **Memory per parameter**: ``z`` alone, one parameter-sized buffer
    (as SGD's momentum buffer). Conventions "optax" and "torch" (Keras has no
    schedule-free SGD); they differ as in :func:`schedule_free_adamw`'s table.
    """
    conv = conventions.lookup(SCHEDULE_FREE_SGD_CONVENTIONS, convention)
    conventions.require("schedule_free_sgd", b1=b1, weight_decay=weight_decay, weight_lr_power=weight_lr_power)
    core = [_averaging(conv, learning_rate, b1, warmup_steps, weight_lr_power, decay, z_dtype)]
    return _finish(
        core,
        conv,
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
        learning_rate=learning_rate,
        decay=decay,
        maximize=maximize,
        loss_scale_factor=loss_scale_factor,
        clipnorm=clipnorm,
        clipvalue=clipvalue,
        global_clipnorm=global_clipnorm,
    )
