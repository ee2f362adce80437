"""ADOPT: Adam that normalises by the previous second moment, in the conventions of optax and pytorch-optimizer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from optax import ScalarOrSchedule

from adamfx._src.core import checks
from adamfx._src.core.base import GradientTransformation
from adamfx._src.optimizers import conventions
from adamfx._src.stages.cautious import cautious as cautious_stage
from adamfx._src.stages.decorrelated import clip_by_step, moving_average, normalize_by_previous, quarter_power


class AdoptConvention(NamedTuple):
    """How one peer writes ADOPT; each field picks a default or a composition."""

    learning_rate: float
    clip_first_index: int  # the index handed to clip_value_fn at step 1: steps taken before (0) or the step (1)
    weight_decay: str  # "coupled" L2 or "decoupled"
    cautious_rescale: str = "count"  # cautious=True: d / (nnz + 1) (pytorch-optimizer's apply_cautious; optax has none)


ADOPT_CONVENTIONS = {
    # optax.contrib.adopt has no default lr and no weight decay: adamfx uses 1e-3 and optax.adamw's decoupled decay.
    "optax": AdoptConvention(1e-3, 0, "decoupled"),
    "torch": AdoptConvention(1e-3, 1, "coupled"),
}


@checks.porting_aids
@conventions.peer_options()
def adopt(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.9999,
    eps: float = 1e-6,
    *,
    use_clipping: bool = True,
    clip_value_fn: Callable[[Any], Any] | None = None,
    nesterov: bool = False,
    weight_decay: ScalarOrSchedule | None = None,
    cautious: bool = False,
    convention: str = "optax",
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    **options: Any,
) -> GradientTransformation:
    r"""ADOPT (Taniguchi et al., 2024, "ADOPT: Modified Adam Can Converge with Any b2 with the Optimal Rate",
    NeurIPS, Alg. 2 with the clipping of Sec. 5).

    For step t = 1, 2, ... with ``lr_t = learning_rate(t - 1) / (1 + decay (t - 1))``::

        t = 1:  v_1 = |g_1|^2,  m_1 = 0                       (no step)
        n_t = clip(g_t / max(sqrt(v_{t-1}), eps), c_t)        c_t = clip_value_fn(i_t), i_t as below
        v_t = b2 v_{t-1} + (1 - b2) |g_t|^2
        m_t = b1 m_{t-1} + (1 - b1) n_t
        p_t = p_{t-1} - lr_t m_t                              (nesterov: lr_t (b1 m_t + (1 - b1) n_t))

    The chain is ``normalize_by_previous -> clip_by_step -> moving_average -> lr_decay``
    (:func:`adamfx.normalize_by_previous`, :func:`adamfx.clip_by_step`, :func:`adamfx.moving_average`;
    ``use_clipping=False`` drops the clip).

    ==========  ====================================  ===========  ====================
    convention  index i_t handed to clip_value_fn     c_2 default  weight_decay
    ==========  ====================================  ===========  ====================
    "optax"     t - 1 (steps taken before)            1            decoupled (*)
    "torch"     t                                     2 ** 0.25    coupled L2
    ==========  ====================================  ===========  ====================

    ``"optax"`` is ``optax.contrib.adopt``; (*) it has no weight decay: adamfx
    uses ``optax.adamw``'s decoupled ``p -= lr_t wd p``. ``"torch"`` is
    pytorch-optimizer 4.1.0's ``ADOPT`` (the authors' algorithm): its
    ``weight_decouple=True`` is ``decoupled=True`` (applied at the first step
    too); its ``fixed_decay`` has no equivalent here. Both peers: the same
    defaults (``b2=0.9999``, ``eps=1e-6``, ``c = step ** 0.25``), eps as
    ``max(sqrt(v), eps)``, no step at t = 1 (the first gradient only fills ``v``).
    ``nesterov`` is optax's option; pytorch-optimizer has none, and ``"torch"``
    takes optax's look-ahead too.

    Args:
      learning_rate: a number or a schedule ``count -> lr``.
      b1, b2: decay rates of ``m`` and ``v``, in [0, 1).
      eps: the floor of ``sqrt(v_{t-1})``.
      use_clipping: clip the normalised gradient at ``clip_value_fn``.
      clip_value_fn: ``index -> clip value`` (jnp-traceable; gets an int32 array);
        ``None``: ``index ** 0.25`` (:func:`adamfx.quarter_power`).
      nesterov: optax's look-ahead ``b1 m_t + (1 - b1) n_t``.
      weight_decay: a number or a schedule; ``None`` or 0: none. Coupled or decoupled as the convention says.
      weight_decay_mask, decoupled: as :func:`adamfx.adam`.
      cautious: the Cautious mask (Liang et al., 2024; :func:`adamfx.cautious`) around the core: per leaf of d
        elements, ``m`` is kept where ``m g > 0`` and scaled by ``d / (nnz + 1)``, as pytorch-optimizer's
        ``ADOPT(cautious=True)`` (it compares with the normalised, clipped gradient, which has g's signs).
        Decoupled weight decay and the learning rate are not masked; not elementwise, so not ``fused``.
      decay, maximize, clipnorm, clipvalue, global_clipnorm, loss_scale_factor, convention: as :func:`adamfx.adam`.
      mu_dtype, nu_dtype: storage of ``m`` and ``v`` (see :func:`adamfx.adam`).

    The first step only fills ``v``; the second divides by ``|g_1|`` and clips at ``c_2``:

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.adopt(1.0, convention="optax")
    >>> params = {"w": jnp.zeros(2)}
    >>> g = {"w": jnp.array([1.0, 4.0])}
    >>> u1, state = tx.update(g, tx.init(params), params)
    >>> u2, state = tx.update({"w": jnp.array([3.0, 2.0])}, state, params)
    >>> u1["w"], u2["w"]  # -(1 - b1) clip(g_2 / |g_1|, 1)
    (Array([-0., -0.], dtype=float32), Array([-0.1 , -0.05], dtype=float32))
    """
    conv = conventions.lookup(ADOPT_CONVENTIONS, convention)
    conventions.require("adopt", learning_rate=learning_rate, b1=b1, b2=b2, eps=eps)
    fn = quarter_power if clip_value_fn is None else clip_value_fn
    clip = [clip_by_step(fn, first_index=conv.clip_first_index)] if use_clipping else []
    core = [
        normalize_by_previous(b2, eps, nu_dtype=nu_dtype),
        *clip,
        moving_average(b1, nesterov=nesterov, mu_dtype=mu_dtype),
    ]
    return conventions.finish(
        [cautious_stage(*core, rescale=conv.cautious_rescale)] if cautious else core,
        conv,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        **options,
    )
