"""Where eps goes: one vocabulary for every stage that divides by the root (or a norm) of a second moment.

Every peer guards ``m / sqrt(v)`` with a small ``eps``; they disagree on where it sits. ``eps_placement``
names the place, the same word in :func:`adamfx.normalize`, :func:`adamfx.rectify`,
:func:`adamfx.infinity_norm` and the optimizers' convention rows:

=================  ====================================  ==============================================
``eps_placement``  denominator                           used by
=================  ====================================  ==============================================
``"outside"``      ``sqrt(v^) + eps``                    PyTorch and optax Adam; PyTorch Adagrad, RMSprop
``"outside_raw"``  ``sqrt(v^) + eps / sqrt(1 - b2^t)``   Keras Adam, PyTorch RAdam: eps on the *uncorrected*
                                                         ``sqrt(v)``, i.e. ``(sqrt(v) + eps) / sqrt(1 - b2^t)``
``"inside"``       ``sqrt(v^ + eps)``                    Keras and optax Adagrad, RMSprop; Adadelta
``"clamp"``        ``max(sqrt(v^), eps)``                ADOPT, Muon-style normalisations
=================  ====================================  ==============================================

``eps`` is always the hyperparameter named ``eps`` in the state, wherever it sits, so
``set_hyperparams(state, eps=...)`` changes the eps the optimizer was built with. (optax's
``eps_root``, a second eps inside the root, stays a separate hyperparameter: ``sqrt(v^ + eps_root)``.)

For a norm that is not a root (Adamax's ``u_t = max(b2 u_{t-1}, |g_t|)``), ``"inside"`` puts eps
inside the norm (``|g_t| + eps`` enters the max: PyTorch, optax) and ``"outside"`` adds it to the norm
(``u_t + eps``: Keras).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from adamfx._src.core import checks

EpsPlacement = Literal["outside", "outside_raw", "inside", "clamp"]
EPS_PLACEMENTS: tuple[str, ...] = ("outside", "outside_raw", "inside", "clamp")


def check_placement(value: str, allowed: tuple[str, ...] = EPS_PLACEMENTS) -> None:
    """Raises ``ValueError`` naming ``eps_placement`` unless ``value`` is one of ``allowed``."""
    checks.check_choice("eps_placement", value, allowed)


def scalar_eps(placement: str, eps: jax.Array, nu_correction: jax.Array) -> jax.Array:
    """The eps to add to the corrected root: ``eps``, or ``eps / sqrt(1 - b2^t)`` for ``"outside_raw"``.

    Computed once per step on scalars (``nu_correction`` is the factor ``v`` was divided by).
    """
    return eps / jnp.sqrt(nu_correction) if placement == "outside_raw" else eps


def guarded_root(v: jax.Array, eps: jax.Array, eps_root: jax.Array, placement: str) -> jax.Array:
    """``sqrt(v + eps_root)`` guarded by ``eps`` as ``placement`` says (``eps`` from :func:`scalar_eps`).

    The placement is one term of one expression, not a stage of its own, hence a choice here
    rather than a different composition.
    """
    if placement == "inside":
        return jnp.sqrt(v + (eps_root + eps))
    root = jnp.sqrt(v + eps_root)
    return jnp.maximum(root, eps) if placement == "clamp" else root + eps


def nonzero_root(v: jax.Array, eps: jax.Array, eps_root: jax.Array, placement: str) -> jax.Array:
    """:func:`guarded_root`, at least the smallest normal number ``tiny``: ``m / root`` is 0 where ``m = 0``
    and eps = 0 (0 / 0; PyTorch and optax give NaN).

    One ``max`` per element against a constant, where the ``m == 0 & root == 0`` select it replaces took
    five ops. Bit for bit :func:`guarded_root` wherever that is ``tiny`` (1.2e-38 in float32, 2.2e-308 in
    float64) or more: wherever eps is a normal number, and wherever ``v + eps_root > 0`` (the root of a
    positive float is at least ~4e-23 in float32, ~2e-162 in float64). Where it is 0 (eps = eps_root = 0,
    v = 0) it becomes ``tiny``: 0 for ``m = 0``, and ``m / tiny``, huge, for a nonzero ``m`` over a zero
    ``v`` (a gradient whose square underflowed), where the peers give inf.
    """
    root = guarded_root(v, eps, eps_root, placement)
    return jnp.maximum(root, jnp.finfo(root.dtype).tiny)
