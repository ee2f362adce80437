"""Adamax: Adam with the infinity norm in place of the second moment, in three conventions."""

from __future__ import annotations

from typing import Any, NamedTuple

from optax import ScalarOrSchedule

from adamfx._src.core import checks
from adamfx._src.core.base import GradientTransformation
from adamfx._src.optimizers import conventions
from adamfx._src.optimizers.adam import adamw_weight_decay
from adamfx._src.stages.moment_forms import infinity_norm
from adamfx._src.stages.moments import bias_correction, scale_by_moments


class AdamaxConvention(NamedTuple):
    """How one peer writes Adamax; each field picks a default or a composition."""

    learning_rate: float
    eps: float
    eps_placement: str  # "inside": u = max(b2 u, |g| + eps) (PyTorch, optax); "outside": m / (u + eps) (Keras)
    weight_decay: str  # "coupled" L2 or "decoupled"


ADAMAX_CONVENTIONS = {
    "optax": AdamaxConvention(2e-3, 1e-8, "inside", "coupled"),  # no default lr in optax: PyTorch's
    "torch": AdamaxConvention(2e-3, 1e-8, "inside", "coupled"),
    "keras": AdamaxConvention(1e-3, 1e-7, "outside", "decoupled"),
}


@checks.porting_aids
@conventions.peer_options()
def adamax(
    learning_rate: ScalarOrSchedule | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float | None = None,
    *,
    weight_decay: float | None = None,
    convention: str = "optax",
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    **options: Any,
) -> GradientTransformation:
    r"""Adamax (Kingma & Ba, 2015, Sec. 7.1, Alg. 2).

    For step t = 1, 2, ... with gradient g_t and ``lr_t = learning_rate(t - 1) / (1 + decay (t - 1))``::

        m_t = b1 m_{t-1} + (1 - b1) g_t
        u_t = max(b2 u_{t-1}, |g_t| + eps),   p_t = p_{t-1} - lr_t m_t / ((1 - b1^t) u_t)          PyTorch, optax
        u_t = max(b2 u_{t-1}, |g_t|),         p_t = p_{t-1} - lr_t m_t / ((1 - b1^t) (u_t + eps))  Keras

    The chain is ``scale_by_moments(b1, None) -> bias_correction -> infinity_norm -> lr_decay``.

    ==========  ========  =====  ======================  ============
    convention  lr        eps    eps added to            weight_decay
    ==========  ========  =====  ======================  ============
    "optax"     2e-3 (*)  1e-8   ``|g|`` inside the max  coupled L2
    "torch"     2e-3      1e-8   ``|g|`` inside the max  coupled L2
    "keras"     1e-3      1e-7   u, after the max        decoupled
    ==========  ========  =====  ======================  ============

    (*) ``optax.adamax`` has no default learning rate; adamfx uses PyTorch's.

    Args:
      learning_rate: a number or a schedule ``count -> lr``; ``None`` takes the convention's default.
      b1: decay rate of the first moment, in [0, 1).
      b2: decay of the running maximum, in [0, 1).
      eps: ``None`` takes the convention's default.
      weight_decay, weight_decay_mask, decoupled, decay, convention: as :func:`adamfx.sgd`.
      maximize, clipnorm, clipvalue, global_clipnorm, loss_scale_factor: as :func:`adamfx.sgd`.
      mu_dtype, nu_dtype: storage of the first moment and of u.

    >>> import adamfx, jax.numpy as jnp
    >>> tx, p = adamfx.adamax(2e-3, convention="keras"), {"w": jnp.ones(2)}
    >>> g = jnp.array([0.5, -2.0])  # step 1: -lr m^ / max(0, |g|) = -lr sign(g)
    >>> [round(float(u), 6) for u in tx.update({"w": g}, tx.init(p), p)[0]["w"]]
    [-0.002, 0.002]
    """
    conv = conventions.lookup(ADAMAX_CONVENTIONS, convention)
    conventions.require("adamax", b1=b1, b2=b2)
    return conventions.finish(
        [
            scale_by_moments(b1, None, mu_dtype=mu_dtype),
            bias_correction(),
            infinity_norm(b2, conventions.pick(eps, conv.eps), eps_placement=conv.eps_placement, nu_dtype=nu_dtype),
        ],
        conv,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        **options,
    )


@checks.porting_aids
@conventions.peer_options(omit=("decoupled",))
def adamaxw(
    learning_rate: ScalarOrSchedule | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float | None = None,
    weight_decay: Any = None,
    *,
    convention: str = "optax",
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    **options: Any,
) -> GradientTransformation:
    """AdamaxW: :func:`adamax` with decoupled weight decay, ``p -= lr_t (m_t / ((1 - b1^t) u_t) + wd p)``.

    optax's ``adamaxw`` (default ``weight_decay`` 1e-4; a number or a schedule
    ``count -> weight_decay``). Keras's ``Adamax(weight_decay=...)`` is this
    decoupled decay already (``adamax(convention="keras")``); PyTorch has no
    AdamaxW, and ``"torch"`` gives the same decoupled decay with PyTorch's AdamW
    default 1e-2 (``"keras"``: 4e-3). Other arguments as :func:`adamax`.

    >>> import adamfx, jax.numpy as jnp
    >>> tx, p = adamfx.adamaxw(2e-3, weight_decay=1e-2), {"w": jnp.ones(2)}
    >>> g = jnp.array([0.5, -2.0])  # step 1: -lr (sign(g) + wd p)
    >>> [round(float(u), 6) for u in tx.update({"w": g}, tx.init(p), p)[0]["w"]]
    [-0.00202, 0.00198]
    """
    weight_decay = adamw_weight_decay(weight_decay, convention)
    return adamax(
        learning_rate,
        b1,
        b2,
        eps,
        weight_decay=weight_decay,
        decoupled=True,
        convention=convention,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
        **options,
    )
