"""Stages on the raw gradient: PyTorch's ``maximize`` and Keras's loss scaling and clipping.

Every optimizer takes these as arguments under their peers' names and puts them
first in its chain, in the order Keras applies them (``BaseOptimizer.apply``):

    g <- -g                               maximize=True         (PyTorch: before weight decay)
    g <- g / loss_scale_factor            loss_scale_factor     (Keras: before accumulation and clipping)
    g <- clipped g                        clipnorm | global_clipnorm | clipvalue   (one of them)
    ... coupled weight decay, the optimizer's own stages, decoupled weight decay, -lr

Keras applies its (decoupled) weight decay to the variables, never through the
clipped gradient, and so do these chains. Each stage is also exported to chain
by hand. Stages whose maths optax has exactly reuse optax's transform
(``clip_by_value``: ``optax.clip``; ``clip_by_global_norm``: ``optax.clip_by_global_norm``);
Keras's per-variable ``clipnorm`` has no optax counterpart (``optax.clip_by_global_norm``
equals it only for a single tensor).

No Python control flow here depends on a threshold's *value* (only on ``None``),
so traced values (``optax.inject_hyperparams``) work.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adamfx._src.core import checks
from adamfx._src.core.base import GradientTransformation, Stateless


@dataclasses.dataclass(frozen=True)
class _Threshold(Stateless):
    """A stateless stage whose one hyperparameter (a threshold or factor) must be > 0."""

    def __post_init__(self):
        super().__post_init__()
        for name, value in self.hyperparameters().items():
            _check_positive(name, value)


@dataclasses.dataclass(frozen=True)
class _NormClip(_Threshold):
    @property
    def elementwise(self) -> bool:  # a norm over a whole leaf, or over all leaves
        return False


@dataclasses.dataclass(frozen=True)
class Negate(Stateless):
    def update(self, updates, state, params=None, **extra_args):
        return jax.tree.map(jnp.negative, updates), state


def negate() -> GradientTransformation:
    """``g <- -g``: ascend instead of descend (PyTorch's ``maximize=True``).

    First in a chain, so a coupled weight decay after it still pulls the
    weights towards zero, as in PyTorch. Elementwise, no state.

    >>> import adamfx, jax.numpy as jnp
    >>> adamfx.negate().update({"w": jnp.array([1.0, -2.0])}, adamfx.negate().init(None))[0]["w"]
    Array([-1.,  2.], dtype=float32)
    """
    return Negate().transform()


@dataclasses.dataclass(frozen=True)
class UnscaleLoss(_Threshold):
    loss_scale_factor: Any

    def update(self, updates, state, params=None, **extra_args):
        return jax.tree.map(lambda g: g / jnp.asarray(self.loss_scale_factor, g.dtype), updates), state


def unscale_loss(loss_scale_factor: float) -> GradientTransformation:
    """``g <- g / loss_scale_factor``: undo a scaled loss (Keras's ``loss_scale_factor``).

    Keras multiplies the loss by the factor (``optimizer.scale_loss``) and divides
    the gradients by it before anything else. Elementwise, no state.

    >>> import adamfx, jax.numpy as jnp
    >>> adamfx.unscale_loss(4.0).update({"w": jnp.array([2.0, -8.0])}, adamfx.unscale_loss(4.0).init(None))[0]["w"]
    Array([ 0.5, -2. ], dtype=float32)
    """
    return UnscaleLoss(loss_scale_factor).transform()


@dataclasses.dataclass(frozen=True)
class ClipByValue(_Threshold):
    clipvalue: Any

    def update(self, updates, state, params=None, **extra_args):
        return optax.clip(self.clipvalue).update(updates, state)


def clip_by_value(clipvalue: float) -> GradientTransformation:
    """``g <- clip(g, -clipvalue, clipvalue)`` elementwise (Keras's ``clipvalue``; ``optax.clip``).

    The same maths as ``optax.clip``, as an adamfx stage (so :func:`adamfx.fused`
    accepts it). No state.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.clip_by_value(1.0)
    >>> tx.update({"w": jnp.array([-3.0, 0.5, 2.0])}, tx.init(None))[0]["w"]
    Array([-1. ,  0.5,  1. ], dtype=float32)
    """
    return ClipByValue(clipvalue).transform()


@dataclasses.dataclass(frozen=True)
class ClipByNormPerLeaf(_NormClip):
    clipnorm: Any

    def update(self, updates, state, params=None, **extra_args):
        def leaf(g):
            c = jnp.asarray(self.clipnorm, g.dtype)
            squares = jnp.sum(jnp.square(g))
            norm = jnp.sqrt(jnp.where(squares > 0, squares, jnp.ones_like(squares)))  # finite gradient at 0
            return g * c / jnp.maximum(jnp.where(squares > 0, norm, squares), c)

        return jax.tree.map(leaf, updates), state


def clip_by_norm_per_leaf(clipnorm: float) -> GradientTransformation:
    """Keras's ``clipnorm``: each leaf ``g <- g clipnorm / max(||g||_2, clipnorm)`` on its own.

    Keras's ``BaseOptimizer._clip_by_norm``, formula and rounding included. Not
    :func:`clip_by_global_norm`, which scales all leaves by one global norm (the
    two agree only for a single leaf). Not elementwise (each leaf's norm), so
    :func:`adamfx.fused` refuses it: chain it in front of the fused optimizer instead.
    No state.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.clip_by_norm_per_leaf(2.5)
    >>> tx.update({"a": jnp.array([3.0]), "b": jnp.array([1.0])}, tx.init(None))[0]  # a: 3 * 2.5 / 3; b kept
    {'a': Array([2.5], dtype=float32), 'b': Array([1.], dtype=float32)}
    """
    return ClipByNormPerLeaf(clipnorm).transform()


@dataclasses.dataclass(frozen=True)
class ClipByGlobalNorm(_NormClip):
    global_clipnorm: Any

    def update(self, updates, state, params=None, **extra_args):
        return optax.clip_by_global_norm(self.global_clipnorm).update(updates, state)


def clip_by_global_norm(global_clipnorm: float) -> GradientTransformation:
    """Keras's ``global_clipnorm``: all leaves scaled by ``min(1, global_clipnorm / ||g||_2)``, one global norm.

    ``optax.clip_by_global_norm``'s maths as an adamfx stage. Not elementwise:
    :func:`adamfx.fused` refuses it (chain ``optax.clip_by_global_norm`` in
    front of the fused optimizer instead). No state.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.clip_by_global_norm(2.5)
    >>> tx.update({"a": jnp.array([3.0]), "b": jnp.array([4.0])}, tx.init(None))[0]  # ||(3, 4)|| = 5: all x 0.5
    {'a': Array([1.5], dtype=float32), 'b': Array([2.], dtype=float32)}
    """
    return ClipByGlobalNorm(global_clipnorm).transform()


def gradient_stages(
    *,
    maximize: bool = False,
    loss_scale_factor: Any = None,
    clipnorm: Any = None,
    clipvalue: Any = None,
    global_clipnorm: Any = None,
) -> list[GradientTransformation]:
    """The stages an optimizer puts first: ``[negate] [unscale_loss] [one clip]``, each only when asked for.

    ``None`` (and ``maximize=False``) leaves a stage out; at most one of the
    three clippings may be given, as in Keras.
    """
    clips = {"clipnorm": clipnorm, "clipvalue": clipvalue, "global_clipnorm": global_clipnorm}
    given = [name for name, value in clips.items() if value is not None]
    if len(given) > 1:
        raise ValueError(
            f"only one of clipnorm, clipvalue and global_clipnorm can be set, got {', '.join(given)} "
            f"({', '.join(f'{name}={clips[name]!r}' for name in given)})."
        )
    if not isinstance(maximize, (bool, jnp.bool_)):
        raise TypeError(f"maximize={maximize!r} is invalid: it must be True or False.")
    clip = {"clipnorm": clip_by_norm_per_leaf, "clipvalue": clip_by_value, "global_clipnorm": clip_by_global_norm}
    return [
        *([negate()] if maximize else []),
        *([] if loss_scale_factor is None else [unscale_loss(loss_scale_factor)]),
        *(clip[name](clips[name]) for name in given),
    ]


def _check_positive(name: str, value: Any) -> None:
    """Concrete numbers must be > 0; traced values (inject_hyperparams) are not checked."""
    checks.check_range(name, value, 0.0)
    number = checks.as_python_scalar(value)
    if isinstance(number, (int, float)) and number == 0:
        raise ValueError(f"{name}={value!r} is invalid: it must be a number > 0 (None turns it off; Keras reads 0 so).")
