"""RAdam: Adam with a rectified adaptive step, in three conventions."""

from __future__ import annotations

from typing import Any, NamedTuple

from optax import ScalarOrSchedule

from adamfx._src.core import checks
from adamfx._src.core.base import GradientTransformation
from adamfx._src.optimizers import conventions
from adamfx._src.stages.corrections import nesterov_momentum, rectify
from adamfx._src.stages.moments import bias_correction, scale_by_moments


class RadamConvention(NamedTuple):
    """How one peer writes RAdam; each field picks a default or a composition."""

    learning_rate: float
    eps: float
    eps_placement: str  # "outside": sqrt(v^) + eps (optax) or "outside_raw": eps on the raw sqrt(v) (PyTorch)
    inclusive: bool  # rectify when rho_t >= threshold (optax) or rho_t > threshold (PyTorch)
    weight_decay: str  # "coupled" L2 or "decoupled"


RADAM_CONVENTIONS = {
    "optax": RadamConvention(1e-3, 1e-8, "outside", True, "coupled"),  # no default lr in optax: PyTorch's
    "torch": RadamConvention(1e-3, 1e-8, "outside_raw", False, "coupled"),
    # Keras has no RAdam: Keras's Adam conventions (eps 1e-7 on the raw root, decoupled decay), PyTorch's threshold.
    "keras": RadamConvention(1e-3, 1e-7, "outside_raw", False, "decoupled"),
}


@checks.porting_aids
@conventions.peer_options()
def radam(
    learning_rate: ScalarOrSchedule | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float | None = None,
    *,
    eps_root: float = 0.0,
    threshold: float = 5.0,
    nesterov: bool = False,
    weight_decay: float | None = None,
    convention: str = "optax",
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    **options: Any,
) -> GradientTransformation:
    r"""RAdam (Liu et al., 2020, "On the Variance of the Adaptive Learning Rate and Beyond", Alg. 2).

    For step t = 1, 2, ... with ``rho_inf = 2 / (1 - b2) - 1``,
    ``rho_t = rho_inf - 2 t b2^t / (1 - b2^t)`` and ``lr_t = learning_rate(t - 1) / (1 + decay (t - 1))``::

        m^_t = m_t / (1 - b1^t),   v^_t = v_t / (1 - b2^t)     (Adam's moments)
        r_t  = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
        p_t  = p_{t-1} - lr_t r_t m^_t / (sqrt(v^_t) + eps)    once rho_t passes the threshold
        p_t  = p_{t-1} - lr_t m^_t                             before

    The chain is ``scale_by_moments -> bias_correction -> rectify -> lr_decay``
    (``nesterov=True``: optax's Nesterov look-ahead, :func:`nesterov_momentum`
    with constant ``b1``, in place of ``bias_correction``).

    ==========  ========  =====  ================================  ============  ============
    convention  lr        eps    eps added to                      rectify when  weight_decay
    ==========  ========  =====  ================================  ============  ============
    "optax"     1e-3 (*)  1e-8   sqrt(v^) (corrected)              rho_t >= 5    coupled L2
    "torch"     1e-3      1e-8   sqrt(v) (raw: eps/sqrt(1-b2^t))   rho_t > 5     coupled L2
    "keras"     1e-3      1e-7   sqrt(v) (raw)                     rho_t > 5     decoupled
    ==========  ========  =====  ================================  ============  ============

    (*) ``optax.radam`` has no default learning rate; adamfx uses PyTorch's.
    **Keras has no RAdam**: ``"keras"`` applies Keras's Adam conventions (eps
    1e-7 on the raw root, decoupled weight decay) with PyTorch's threshold,
    which is PyTorch's ``RAdam(eps=1e-7, decoupled_weight_decay=True)``.
    PyTorch's threshold is fixed at 5; ``threshold`` moves it.

    Args:
      learning_rate: a number or a schedule ``count -> lr``; ``None`` takes the convention's default.
      b1, b2: decay rates of the first and second moments, in [0, 1).
      eps: ``None`` takes the convention's default.
      eps_root: added inside the root (optax).
      threshold: rho_t from which the adaptive step is taken (at least 4).
      nesterov: optax's Nesterov look-ahead on the first moment.
      weight_decay: coupled L2 or decoupled (PyTorch's ``decoupled_weight_decay``), as the convention says.
      weight_decay_mask, decoupled, decay, convention: as :func:`adamfx.sgd`.
      maximize, clipnorm, clipvalue, global_clipnorm, loss_scale_factor: as :func:`adamfx.sgd`.
      mu_dtype, nu_dtype: storage of the moments (default: the parameter dtype; float32 for float16 params).

    >>> import adamfx, jax.numpy as jnp
    >>> tx, p = adamfx.radam(1e-3, convention="torch"), {"w": jnp.ones(2)}
    >>> g = jnp.array([0.5, -2.0])  # step 1 (rho_1 < 5) is the momentum step -lr m^ = -lr g
    >>> [round(float(u), 6) for u in tx.update({"w": g}, tx.init(p), p)[0]["w"]]
    [-0.0005, 0.002]
    """
    conv = conventions.lookup(RADAM_CONVENTIONS, convention)
    conventions.require("radam", b1=b1, b2=b2)
    eps = conventions.pick(eps, conv.eps)
    return conventions.finish(
        [
            scale_by_moments(b1, b2, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
            nesterov_momentum(None) if nesterov else bias_correction(),
            rectify(
                eps, eps_root=eps_root, eps_placement=conv.eps_placement, threshold=threshold, inclusive=conv.inclusive
            ),
        ],
        conv,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        **options,
    )
