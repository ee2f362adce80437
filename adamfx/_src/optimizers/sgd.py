"""Stochastic gradient descent with momentum, in three conventions."""

from __future__ import annotations

from typing import Any, NamedTuple

from optax import ScalarOrSchedule

from adamfx._src.core import checks
from adamfx._src.core.base import GradientTransformation
from adamfx._src.optimizers import conventions
from adamfx._src.stages.momentum import trace


class SgdConvention(NamedTuple):
    """How one peer writes SGD; each field picks a default or a composition."""

    learning_rate: float  # default learning rate
    lr_inside: bool  # the momentum buffer holds -lr_t g (Keras) instead of g
    weight_decay: str  # meaning of weight_decay: "coupled" L2 or "decoupled"
    nesterov_needs_momentum: bool  # nesterov=True with momentum 0 is an error (PyTorch), else plain SGD


SGD_CONVENTIONS = {
    "optax": SgdConvention(1e-3, False, "coupled", False),  # optax.sgd has no default lr: PyTorch's
    "torch": SgdConvention(1e-3, False, "coupled", True),
    "keras": SgdConvention(1e-2, True, "decoupled", False),
}


@checks.porting_aids
@conventions.peer_options()
def sgd(
    learning_rate: ScalarOrSchedule | None = None,
    momentum: float | None = None,
    dampening: float = 0.0,
    nesterov: bool = False,
    *,
    weight_decay: float | None = None,
    convention: str = "optax",
    mu_dtype: Any = None,
    **options: Any,
) -> GradientTransformation:
    r"""Stochastic gradient descent (Robbins & Monro, 1951) with heavy-ball or Nesterov momentum.

    For step t = 1, 2, ... with gradient g_t and ``lr_t = learning_rate(t - 1) / (1 + decay (t - 1))``::

        b_1 = g_1,   b_t = momentum b_{t-1} + (1 - dampening) g_t
        d_t = g_t + momentum b_t  (nesterov)   or   d_t = b_t
        p_t = p_{t-1} - lr_t d_t

    Without momentum, ``p_t = p_{t-1} - lr_t g_t``. The chain is
    ``trace -> lr_decay`` (PyTorch, optax) or ``lr_decay -> trace`` (Keras: the
    buffer holds ``-lr_t g``, so ``b_t = momentum b_{t-1} - lr_t g_t`` and
    ``p_t = p_{t-1} + b_t``; the same trajectory while the learning rate is
    constant, a different one under a schedule or ``decay``).

    ==========  ========  ================  ================================================  =====================
    convention  lr        lr in the buffer  weight_decay                                      nesterov, momentum 0
    ==========  ========  ================  ================================================  =====================
    "optax"     1e-3 (*)  no                coupled L2 (``optax.add_decayed_weights`` first)  plain SGD (as optax)
    "torch"     1e-3      no                coupled L2 (``torch.optim.SGD``)                  ValueError (as torch)
    "keras"     1e-2      yes               decoupled ``p -= lr_t wd p``, outside the buffer  plain SGD (as Keras)
    ==========  ========  ================  ================================================  =====================

    (*) ``optax.sgd`` has no default learning rate; adamfx uses PyTorch's.
    ``dampening`` is PyTorch's (optax and Keras have none; with the default 0
    the first-step rule ``b_1 = g_1`` is the same as starting from zero, as they do).

    Args:
      learning_rate: a number or a schedule ``count -> lr``; ``None`` takes the convention's default.
      momentum: the buffer's decay rate in [0, 1]; ``None`` or 0 keeps no buffer.
      dampening: the buffer takes ``(1 - dampening) g_t`` after the first step.
      nesterov: Nesterov momentum (needs ``dampening == 0``; with ``momentum == 0`` it is plain
        SGD under ``"keras"`` and ``"optax"``, as there, and a ``ValueError`` under ``"torch"``, as there).
      weight_decay: coupled L2 or decoupled decay, as the convention says; a number or a schedule
        ``count -> weight_decay``.
      weight_decay_mask: pytree of bools (or callable of params) selecting decayed leaves.
      decoupled: override the convention's meaning of ``weight_decay``.
      decay: legacy Keras inverse-time decay: ``lr / (1 + decay t)``, t from 0.
      maximize: ascend (PyTorch's ``maximize``): the gradient is negated first, before weight decay.
      clipnorm, clipvalue, global_clipnorm: Keras's gradient clipping (at most one): each leaf by its
        own norm (:func:`adamfx.clip_by_norm_per_leaf`), elementwise (:func:`adamfx.clip_by_value`), all
        leaves by their global norm (:func:`adamfx.clip_by_global_norm`).
      loss_scale_factor: Keras's: the gradient is divided by it first (:func:`adamfx.unscale_loss`).
        These five act on the raw gradient, first in the chain in Keras's order (negate, unscale,
        clip), under every convention; ``None`` turns each off.
      convention: ``"optax"``, ``"torch"`` or ``"keras"``.
      mu_dtype: storage of the momentum buffer (default: the parameter dtype; float32 for float16 params).

    >>> import adamfx, jax.numpy as jnp, optax
    >>> params = {"w": jnp.ones(2)}
    >>> tx = adamfx.sgd(0.1, momentum=0.9, convention="torch")
    >>> updates, state = tx.update({"w": jnp.ones(2)}, tx.init(params), params)
    >>> optax.apply_updates(params, updates)["w"]
    Array([0.9, 0.9], dtype=float32)
    """
    conv = conventions.lookup(SGD_CONVENTIONS, convention)
    nesterov = conventions.effective_nesterov(nesterov, momentum, conv)
    keep_buffer = nesterov or not checks.is_static_zero(momentum)  # a JAX array (inject_hyperparams) keeps it
    buffer = [trace(conventions.pick(momentum, 0.0), dampening, nesterov, mu_dtype=mu_dtype)] if keep_buffer else []
    return conventions.finish(
        [],
        conv,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        momentum=buffer,
        lr_inside=conv.lr_inside,
        **options,
    )
