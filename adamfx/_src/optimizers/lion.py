"""Lion: the sign of an interpolated momentum, one moment of state, in three conventions."""

from __future__ import annotations

from typing import Any, NamedTuple

from optax import ScalarOrSchedule

from adamfx._src.core import checks
from adamfx._src.core.base import GradientTransformation
from adamfx._src.optimizers import conventions
from adamfx._src.stages.cautious import cautious as cautious_stage
from adamfx._src.stages.sign import lion_momentum, sign


class LionConvention(NamedTuple):
    """How one peer writes Lion; each field picks a default or a composition."""

    learning_rate: float
    default_weight_decay: float
    weight_decay: str  # "decoupled": p -= lr_t wd p (every peer)
    cautious_rescale: str  # cautious=True: "count" d / (nnz + 1) or "mean" 1 / max(mean, 1e-5)


LION_CONVENTIONS = {
    # optax.lion has no default learning rate: lion-pytorch's (the paper's 3-10x below AdamW's).
    "optax": LionConvention(1e-4, 1e-3, "decoupled", "count"),
    "keras": LionConvention(1e-3, 0.0, "decoupled", "count"),
    "torch": LionConvention(1e-4, 0.0, "decoupled", "mean"),
}


@checks.porting_aids
@conventions.peer_options(omit=("decoupled",))
def lion(
    learning_rate: ScalarOrSchedule | None = None,
    b1: float = 0.9,
    b2: float = 0.99,
    *,
    weight_decay: ScalarOrSchedule | None = None,
    cautious: bool = False,
    convention: str = "optax",
    mu_dtype: Any = None,
    **options: Any,
) -> GradientTransformation:
    r"""Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms", Program 1).

    For step t = 1, 2, ... with ``lr_t = learning_rate(t - 1) / (1 + decay (t - 1))``::

        c_t = b1 m_{t-1} + (1 - b1) g_t
        m_t = b2 m_{t-1} + (1 - b2) g_t
        p_t = p_{t-1} - lr_t (sign(c_t) + weight_decay p_{t-1})

    The chain is ``lion_momentum -> sign -> [add_decayed_weights] -> lr_decay``; ``cautious=True`` wraps
    ``lion_momentum -> sign`` in :func:`adamfx.cautious` (Liang et al., 2024): per leaf of d elements,
    ``sign(c_t)`` is kept where it agrees with ``g_t`` and rescaled (the weight decay is not masked).

    ==========  ========  ============  ===================  ===============================================
    convention  lr        weight_decay  decay form           cautious=True rescale (kept components)
    ==========  ========  ============  ===================  ===============================================
    "optax"     1e-4 (a)  1e-3          p -= lr_t wd p       d / (nnz + 1) (c)
    "keras"     1e-3      0 (None)      p -= lr_t wd p (b)   d / (nnz + 1) (c)
    "torch"     1e-4      0             p <- (1-lr_t wd) p   1 / max(nnz / d, 1e-5) (lion-pytorch)
    ==========  ========  ============  ===================  ===============================================

    (a) ``optax.lion`` has no default learning rate: lion-pytorch's. (b) Keras decays the weights before the
    step, which is the same update. (c) optax and Keras have no cautious Lion: the paper's code, which is
    pytorch-optimizer's ``Lion(cautious=True)``. ``"torch"`` follows lion-pytorch 0.2.5: ``lion_pytorch.Lion``,
    and with ``cautious=True`` its ``lion_pytorch.cautious_lion.Lion(cautious_factor=0)``
    (other cautious factors: build ``adamfx.cautious(lion_momentum(), sign(), rescale="mean", factor=f)``).
    lion-pytorch's ``decoupled_weight_decay=True`` (``wd / lr_0``) is ``weight_decay=wd / lr_0`` here.

    Args:
      learning_rate: a number or a schedule ``count -> lr``; ``None`` takes the convention's default.
      b1: weight of the momentum in the interpolation ``c_t``, in [0, 1).
      b2: decay rate of the momentum, in [0, 1).
      weight_decay: decoupled, scaled by ``lr_t``; a number or a schedule; ``None`` takes the convention's default.
      cautious: mask the sign update against the gradient (see above). Not elementwise: not :func:`adamfx.fused`.
      weight_decay_mask: pytree of bools (or callable of params) selecting decayed leaves (optax's ``mask``).
      decay, convention, maximize, clipnorm, clipvalue, global_clipnorm, loss_scale_factor: as :func:`adamfx.adam`.
      mu_dtype: storage of the single moment: ``None`` (like the parameter), ``jnp.bfloat16`` (stochastic
        rounding), ``"int8"`` or a :class:`adamfx.Storage`. The update is a sign, so it stays bounded,
        ``|u| <= lr (1 + wd |p|)``, whatever the storage.

    The first update of a constant gradient is ``-lr sign(g)``:

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.lion(1e-3, convention="torch")
    >>> params = {"w": jnp.array([1.0, -2.0, 0.0])}
    >>> updates, _ = tx.update({"w": jnp.array([0.5, -3.0, 2.0])}, tx.init(params), params)
    >>> updates["w"]
    Array([-0.001,  0.001, -0.001], dtype=float32)
    """
    conv = conventions.lookup(LION_CONVENTIONS, convention)
    conventions.require("lion", b1=b1, b2=b2)
    core = [lion_momentum(b1, b2, mu_dtype=mu_dtype), sign()]
    return conventions.finish(
        [cautious_stage(*core, rescale=conv.cautious_rescale)] if cautious else core,
        conv,
        learning_rate=learning_rate,
        weight_decay=conventions.pick(weight_decay, conv.default_weight_decay),
        **options,
    )
