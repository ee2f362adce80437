"""LAMB: Adam's step rescaled by a layer-wise trust ratio, in two conventions."""

from __future__ import annotations

from typing import Any, NamedTuple

from optax import ScalarOrSchedule

from adamfx._src.core import checks
from adamfx._src.core.base import GradientTransformation
from adamfx._src.optimizers import conventions
from adamfx._src.stages.moments import bias_correction, normalize, scale_by_moments
from adamfx._src.stages.trust_ratio import trust_ratio
from adamfx._src.stages.weight_decay import add_decayed_weights, decoupled_weight_decay


class LambConvention(NamedTuple):
    """How one peer writes LAMB; each field picks a default or a composition."""

    learning_rate: float
    eps: float
    eps_placement: str  # "outside": sqrt(v^) + eps (both peers)
    decay_in_ratio: bool  # weight decay inside the update the ratio rescales (optax) or outside it (Keras)
    weight_decay: str = "decoupled"  # (finish's field; the decay stages are placed by lamb itself)


LAMB_CONVENTIONS = {
    "optax": LambConvention(1e-3, 1e-6, "outside", True),  # optax.lamb has no default lr: Keras's
    "keras": LambConvention(1e-3, 1e-7, "outside", False),
}


@checks.porting_aids
@conventions.peer_options(omit=("decoupled",))
def lamb(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float | None = None,
    *,
    weight_decay: ScalarOrSchedule = 0.0,
    convention: str = "optax",
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    **options: Any,
) -> GradientTransformation:
    r"""LAMB (You et al., 2020, "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes", Alg. 2).

    For step t = 1, 2, ..., per leaf (layer) with ``lr_t = learning_rate(t - 1) / (1 + decay (t - 1))``::

        m^_t, v^_t = Adam's bias-corrected moments
        a_t = m^_t / (sqrt(v^_t) + eps)
        optax:  u_t = a_t + wd p,   p_t = p - lr_t (||p|| / ||u_t||) u_t
        keras:  q = p - lr_t wd p,  p_t = q - lr_t (||q|| / ||a_t||) a_t

    with the ratio 1 where either norm is 0 (both peers). The chain is ``scale_by_moments ->
    bias_correction -> normalize -> add_decayed_weights -> trust_ratio -> lr_decay`` (optax), or
    ``... normalize -> trust_ratio(after=decoupled_weight_decay) -> add_decayed_weights -> lr_decay`` (Keras).

    ==========  ====  =====  ============================  ==============================================
    convention  lr    eps    eps added to                  weight decay
    ==========  ====  =====  ============================  ==============================================
    "optax"     1e-3  1e-6   sqrt(v^) (corrected)          in the update and the ratio (the paper)
    "keras"     1e-3  1e-7   sqrt(v^) (corrected)          decoupled, outside the ratio; ||p|| after it
    ==========  ====  =====  ============================  ==============================================

    ``optax.lamb`` has no default learning rate (the signature's 1e-3 is Keras's). PyTorch has no LAMB.
    The trust ratio is a per-leaf reduction: :func:`adamfx.fused` rejects LAMB.

    Args:
      learning_rate: a number or a schedule ``count -> lr``.
      b1, b2: decay rates of the first and second moments, in [0, 1).
      eps: added to the corrected root; ``None`` takes the convention's default.
      weight_decay: a number or (optax) a schedule; where it enters, the table says.
      convention: ``"optax"`` or ``"keras"``.

    ``weight_decay_mask``, ``decay``, ``maximize``, ``clipnorm``, ``clipvalue``, ``global_clipnorm``,
    ``loss_scale_factor``, ``mu_dtype`` and ``nu_dtype`` are as in :func:`adamfx.adam`.

    Example: a first step takes ``lr ||p||`` per leaf (Adam's first step is ``sign(g)``, so
    ``||a_1|| = sqrt(d)``):

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.lamb(0.1, eps=0.0)
    >>> params = {"w": jnp.array([3.0, 4.0])}
    >>> updates, _ = tx.update({"w": jnp.array([1.0, -1.0])}, tx.init(params), params)
    >>> updates["w"]  # -0.1 * 5 / sqrt(2) * sign(g)
    Array([-0.35355338,  0.35355338], dtype=float32)
    """
    conv = conventions.lookup(LAMB_CONVENTIONS, convention)
    conventions.require("lamb", learning_rate=learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)
    eps = conventions.pick(eps, conv.eps)
    adam_core = [
        scale_by_moments(b1, b2, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
        bias_correction(),
        normalize(eps, eps_placement=conv.eps_placement),
    ]
    # The decay stages are kept at weight_decay=0 too (as optax.lamb does): the state's structure must not
    # depend on whether optax.inject_hyperparams made the 0 an array.
    mask = options.pop("weight_decay_mask")  # the decay stages are placed here, not by finish
    decayed = add_decayed_weights(weight_decay, mask)
    if conv.decay_in_ratio:  # u = a + wd p, then the ratio
        core = [*adam_core, decayed, trust_ratio()]
    else:  # the ratio of ||p - lr_t wd p||, then + wd p outside it
        before = decoupled_weight_decay(weight_decay, learning_rate, options["decay"], mask)
        core = [*adam_core, trust_ratio(after=before), decayed]
    return conventions.finish(core, conv, learning_rate=learning_rate, **options)
