"""Adafactor's update clipping: ``clip_by_block_rms``.

Shazeer & Stern, 2018, Sec. 5: each leaf's update is scaled down to a root mean
square of at most ``d``,

    u^_t = u_t / max(1, RMS(u_t) / d),      RMS(u) = sqrt(mean(|u|^2)) over the leaf,

the same in optax (``clip_by_block_rms``), PyTorch (``Adafactor(d=)``) and Keras
(``Adafactor(clip_threshold=)``). A per-leaf reduction, so not elementwise.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from adamfx._src.core import hyperparams as hp
from adamfx._src.core.base import GradientTransformation, Stage
from adamfx._src.core.numerics import abs_sq, compute_dtype, scalar_like


class BlockRmsState(NamedTuple):
    hyperparams: dict  # clipping_threshold


def rms(x: jax.Array) -> jax.Array:
    """``sqrt(mean(|x|^2))`` over the whole leaf (``|x|`` for a scalar)."""
    return jnp.sqrt(jnp.mean(abs_sq(x)))


@dataclasses.dataclass(frozen=True)
class ClipByBlockRms(Stage):
    clipping_threshold: float

    @property
    def elementwise(self) -> bool:  # RMS over each leaf
        return False

    def init(self, params):
        return BlockRmsState(hp.as_arrays(clipping_threshold=self.clipping_threshold))

    def update(self, updates, state, params=None, **extra_args):
        d = state.hyperparams["clipping_threshold"]

        def leaf(u):
            x = u.astype(compute_dtype(u.dtype))
            return (x / jnp.maximum(1, rms(x) / scalar_like(d, x.real))).astype(u.dtype)

        return jax.tree.map(leaf, updates), state


def clip_by_block_rms(clipping_threshold: float = 1.0) -> GradientTransformation:
    """Divides each leaf's update by ``max(1, RMS(u) / clipping_threshold)`` (``clipping_threshold >= 1``).

    State: hyperparameter ``clipping_threshold``.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.clip_by_block_rms(1.0)
    >>> tx.update({"w": jnp.array([2.0, -2.0]), "b": jnp.array([0.5])}, tx.init(None))[0]  # RMS 2 -> / 2; 0.5 kept
    {'b': Array([0.5], dtype=float32), 'w': Array([ 1., -1.], dtype=float32)}
    """
    return ClipByBlockRms(clipping_threshold).transform()
