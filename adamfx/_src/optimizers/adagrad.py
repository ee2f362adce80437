"""Adagrad in three conventions."""

from __future__ import annotations

from typing import Any, NamedTuple

from optax import ScalarOrSchedule

from adamfx._src.core import checks
from adamfx._src.core.base import GradientTransformation
from adamfx._src.optimizers import conventions
from adamfx._src.stages.moment_forms import accumulate_squares
from adamfx._src.stages.moments import normalize


class AdagradConvention(NamedTuple):
    """How one peer writes Adagrad; each field picks a default or a composition."""

    learning_rate: float
    initial_accumulator_value: float
    eps: float
    eps_placement: str  # "inside": sqrt(v + eps) (Keras, optax) or "outside": sqrt(v) + eps (PyTorch)
    weight_decay: str  # "coupled" L2 or "decoupled"


ADAGRAD_CONVENTIONS = {
    "optax": AdagradConvention(1e-2, 0.1, 1e-7, "inside", "coupled"),  # no default lr in optax: PyTorch's
    "torch": AdagradConvention(1e-2, 0.0, 1e-10, "outside", "coupled"),
    "keras": AdagradConvention(1e-3, 0.1, 1e-7, "inside", "decoupled"),
}


@checks.porting_aids
@conventions.peer_options()
def adagrad(
    learning_rate: ScalarOrSchedule | None = None,
    lr_decay: float | None = None,
    initial_accumulator_value: float | None = None,
    eps: float | None = None,
    *,
    weight_decay: float | None = None,
    convention: str = "optax",
    nu_dtype: Any = None,
    **options: Any,
) -> GradientTransformation:
    r"""Adagrad (Duchi, Hazan & Singer, 2011): per-coordinate steps from the running sum of squares.

    For step t = 1, 2, ... with gradient g_t::

        v_t  = v_{t-1} + |g_t|^2,     v_0 = initial_accumulator_value
        lr_t = learning_rate(t - 1) / (1 + decay (t - 1))
        p_t  = p_{t-1} - lr_t g_t / (sqrt(v_t) + eps)      PyTorch
        p_t  = p_{t-1} - lr_t g_t / sqrt(v_t + eps)        Keras, optax

    The chain is ``accumulate_squares -> normalize -> lr_decay``.

    ==========  =========  ====================  =======  ==================  ==========
    convention  lr         initial accumulator   eps      eps placement       weight_decay
    ==========  =========  ====================  =======  ==================  ==========
    "optax"     1e-2 (*)   0.1                   1e-7     inside the root     coupled L2
    "torch"     1e-2       0                     1e-10    outside the root    coupled L2
    "keras"     1e-3       0.1                   1e-7     inside the root     decoupled
    ==========  =========  ====================  =======  ==================  ==========

    (*) ``optax.adagrad`` has no default learning rate; adamfx uses PyTorch's.
    ``lr_decay`` is PyTorch's name for the legacy Keras ``decay``: both give
    ``lr / (1 + lr_decay (t - 1))``; give one of them. optax guards
    ``v_t = 0`` (an all-zero gradient history with ``eps = 0``) to a zero step
    where adamfx, like PyTorch and Keras, divides.

    Args:
      learning_rate: a number or a schedule ``count -> lr``; ``None`` takes the convention's default.
      lr_decay: PyTorch's inverse-time decay, the same as ``decay``.
      initial_accumulator_value: ``v_0``; ``None`` takes the convention's default.
      eps: ``None`` takes the convention's default.
      weight_decay, weight_decay_mask, decoupled, decay, convention: as :func:`adamfx.sgd`.
      maximize, clipnorm, clipvalue, global_clipnorm, loss_scale_factor: as :func:`adamfx.sgd`.
      nu_dtype: storage of the accumulator (default: the parameter dtype; float32 for float16 params).

    >>> import adamfx, jax.numpy as jnp
    >>> tx, p = adamfx.adagrad(1e-2, convention="torch"), {"w": jnp.ones(2)}
    >>> g = jnp.array([0.5, -2.0])  # step 1: -lr g / sqrt(g^2) = -lr sign(g)
    >>> [round(float(u), 6) for u in tx.update({"w": g}, tx.init(p), p)[0]["w"]]
    [-0.01, 0.01]
    """
    conv = conventions.lookup(ADAGRAD_CONVENTIONS, convention)
    checks.check_hyperparameter("lr_decay", lr_decay, optional=True)
    decay = options["decay"]
    checks.check_hyperparameter("decay", decay)
    both = not checks.is_static_zero(lr_decay) and not checks.is_static_zero(decay)
    if both and checks.is_concrete(lr_decay) and checks.is_concrete(decay):
        raise ValueError(
            f"adagrad got lr_decay={lr_decay!r} and decay={decay!r}: they are one inverse-time decay, give one."
        )
    if not checks.is_static_zero(lr_decay):  # traced (inject_hyperparams) values cannot be tested: one of them is 0
        options["decay"] = lr_decay if checks.is_static_zero(decay) else decay + lr_decay
    initial_accumulator_value = conventions.pick(initial_accumulator_value, conv.initial_accumulator_value)
    return conventions.finish(
        [
            accumulate_squares(initial_accumulator_value, nu_dtype=nu_dtype),
            normalize(conventions.pick(eps, conv.eps), eps_placement=conv.eps_placement),
        ],
        conv,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        **options,
    )
