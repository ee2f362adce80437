"""Nadam and NAdamW: Adam with a Nesterov look-ahead, in three conventions."""

from __future__ import annotations

from typing import Any, NamedTuple

from optax import ScalarOrSchedule

from adamfx._src.core import checks
from adamfx._src.core.base import GradientTransformation
from adamfx._src.optimizers import conventions
from adamfx._src.optimizers.adam import adamw_weight_decay
from adamfx._src.stages.corrections import nesterov_momentum
from adamfx._src.stages.moments import bias_correction, normalize, scale_by_moments


class NadamConvention(NamedTuple):
    """How one peer writes Nadam; each field picks a default or a composition."""

    learning_rate: float
    eps: float
    momentum_decay: float | None  # psi of mu_t = b1 (1 - 0.5 * 0.96^(t psi)); None: mu_t = b1
    weight_decay: str  # "coupled" L2 or "decoupled"


NADAM_CONVENTIONS = {
    "optax": NadamConvention(2e-3, 1e-8, None, "coupled"),  # no default lr in optax: PyTorch's
    "torch": NadamConvention(2e-3, 1e-8, 4e-3, "coupled"),
    "keras": NadamConvention(1e-3, 1e-7, 1.0, "decoupled"),
}


@checks.porting_aids
@conventions.peer_options()
def nadam(
    learning_rate: ScalarOrSchedule | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float | None = None,
    momentum_decay: float | None = None,
    *,
    nesterov: bool = True,
    eps_root: float = 0.0,
    weight_decay: float | None = None,
    convention: str = "optax",
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    **options: Any,
) -> GradientTransformation:
    r"""Nadam (Dozat, 2016, "Incorporating Nesterov Momentum into Adam").

    For step t = 1, 2, ... with gradient g_t, ``mu_t = b1 (1 - 0.5 * 0.96^(t momentum_decay))``,
    ``P_t = prod_{i<=t} mu_i`` and ``lr_t = learning_rate(t - 1) / (1 + decay (t - 1))``::

        m_t  = b1 m_{t-1} + (1 - b1) g_t,    v_t = b2 v_{t-1} + (1 - b2) |g_t|^2
        m^_t = mu_{t+1} m_t / (1 - P_t mu_{t+1}) + (1 - mu_t) g_t / (1 - P_t)
        p_t  = p_{t-1} - lr_t m^_t / (sqrt(v_t / (1 - b2^t) + eps_root) + eps)

    The chain is ``scale_by_moments -> nesterov_momentum -> normalize -> lr_decay``.
    The three peers differ in the momentum schedule:

    ==========  ========  =====  ==================================  ============
    convention  lr        eps    mu_t                                weight_decay
    ==========  ========  =====  ==================================  ============
    "optax"     2e-3 (*)  1e-8   b1 (constant)                       coupled L2
    "torch"     2e-3      1e-8   b1 (1 - 0.5 * 0.96^(0.004 t))       coupled L2
    "keras"     1e-3      1e-7   b1 (1 - 0.5 * 0.96^t)               decoupled
    ==========  ========  =====  ==================================  ============

    (*) ``optax.nadam`` has no default learning rate; adamfx uses PyTorch's.
    With ``mu_t = b1`` the look-ahead is optax's
    ``b1 m_t / (1 - b1^(t+1)) + (1 - b1) g_t / (1 - b1^t)``. ``momentum_decay``
    is PyTorch's psi; giving it under ``"optax"`` turns the schedule on.

    Args:
      learning_rate: a number or a schedule ``count -> lr``; ``None`` takes the convention's default.
      b1, b2: decay rates of the first and second moments, in [0, 1).
      eps: added to the root of the corrected second moment; ``None`` takes the convention's.
      momentum_decay: psi of the momentum schedule; ``None`` takes the convention's.
      nesterov: ``False`` replaces the look-ahead by Adam's ``m_t / (1 - b1^t)``: optax's
        ``nadam(nesterov=False)``, which is ``optax.adam`` (every convention; no ``momentum_decay`` then).
      eps_root: added inside the root (optax).
      weight_decay: coupled L2 or decoupled (PyTorch's ``decoupled_weight_decay``), as the convention says.
      weight_decay_mask, decoupled, decay, convention: as :func:`adamfx.sgd`.
      maximize, clipnorm, clipvalue, global_clipnorm, loss_scale_factor: as :func:`adamfx.sgd`.
      mu_dtype, nu_dtype: storage of the moments (default: the parameter dtype; float32 for float16 params).

    >>> import adamfx, jax.numpy as jnp
    >>> tx, p = adamfx.nadam(2e-3, convention="torch"), {"w": jnp.ones(2)}
    >>> g = jnp.array([0.5, -2.0])  # step 1: -lr (mu_2 (1 - b1) / (1 - mu_1 mu_2) + 1) sign(g)
    >>> [round(float(u), 6) for u in tx.update({"w": g}, tx.init(p), p)[0]["w"]]
    [-0.002113, 0.002113]
    """
    conv = conventions.lookup(NADAM_CONVENTIONS, convention)
    conventions.require("nadam", b1=b1, b2=b2)
    if not nesterov and momentum_decay is not None:
        raise ValueError(
            f"nadam(nesterov=False, momentum_decay={momentum_decay!r}) is invalid: without the look-ahead "
            "there is no momentum schedule; drop momentum_decay."
        )
    look_ahead = (
        nesterov_momentum(conventions.pick(momentum_decay, conv.momentum_decay)) if nesterov else bias_correction()
    )
    return conventions.finish(
        [
            scale_by_moments(b1, b2, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
            look_ahead,
            normalize(conventions.pick(eps, conv.eps), eps_root=eps_root),
        ],
        conv,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        **options,
    )


@checks.porting_aids
@conventions.peer_options(omit=("decoupled",))
def nadamw(
    learning_rate: ScalarOrSchedule | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float | None = None,
    weight_decay: float | None = None,
    momentum_decay: float | None = None,
    *,
    nesterov: bool = True,
    eps_root: float = 0.0,
    convention: str = "optax",
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    **options: Any,
) -> GradientTransformation:
    """NAdamW: :func:`nadam` with decoupled weight decay, ``p -= lr_t (m^_t / (sqrt(v^_t) + eps) + wd p)``.

    optax's ``nadamw`` (default ``weight_decay`` 1e-4); PyTorch's
    ``NAdam(decoupled_weight_decay=True)`` and Keras's ``Nadam(weight_decay=...)``,
    which have no default decay of their own, take their AdamW's (1e-2, 4e-3).
    ``weight_decay`` may be a schedule ``count -> weight_decay`` (as in optax).
    Other arguments as :func:`nadam` (``nesterov=False`` is optax's ``nadamw(nesterov=False)``, i.e. ``adamw``).

    >>> import adamfx, jax.numpy as jnp
    >>> tx, p = adamfx.nadamw(1e-3, weight_decay=1e-2, convention="torch"), {"w": jnp.ones(2)}
    >>> g = jnp.array([0.5, -2.0])  # step 1: nadam's step (1.0565e-3 sign(g), lr 1e-3) - lr wd p
    >>> [round(float(u), 6) for u in tx.update({"w": g}, tx.init(p), p)[0]["w"]]
    [-0.001066, 0.001046]
    """
    weight_decay = adamw_weight_decay(weight_decay, convention)
    return nadam(
        learning_rate,
        b1,
        b2,
        eps,
        momentum_decay,
        nesterov=nesterov,
        eps_root=eps_root,
        weight_decay=weight_decay,
        decoupled=True,
        convention=convention,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
        **options,
    )
