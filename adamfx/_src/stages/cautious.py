"""The Cautious mask (Liang et al., 2024, "Cautious Optimizers: Improving Training with One Line of Code").

An optimizer's update ``u`` is kept only where it points the way the gradient ``g`` does, and the
surviving components are scaled up so that the update keeps its size. Per leaf of ``d`` elements::

    phi = 1[u * g > 0]                       the components that agree with the gradient
    s   = phi + factor (1 - phi)             (``factor``: lion-pytorch's cautious_factor, else 0)
    u  <- u * s * d / (sum(s) + 1)           rescale="count": the paper's code, pytorch-optimizer 4.1.0
    u  <- u * s / max(sum(s) / d, 1e-5)      rescale="mean": lion-pytorch 0.2.5 (cautious_lion.Lion)

The sum makes the mask a per-leaf reduction: it is not elementwise, and :func:`adamfx.fused` rejects it.
For complex leaves "agrees" means ``Re(u conj(g)) > 0``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adamfx._src.core import checks
from adamfx._src.core import hyperparams as hp
from adamfx._src.core.base import GradientTransformation, Stage, chain
from adamfx._src.core.numerics import compute_dtype, scalar_like
from adamfx._src.stages.moments import Moments

RESCALES = ("count", "mean")
_MEAN_FLOOR = 1e-5  # lion-pytorch: scale.mean().clamp(min=1e-5)


def _agrees(u: jax.Array, g: jax.Array) -> jax.Array:
    """``u * g > 0`` (``Re(u conj(g)) > 0`` for complex leaves)."""
    return (u * jnp.conj(g)).real > 0 if jnp.iscomplexobj(u) else u * g > 0


def mask_leaf(u: jax.Array, g: jax.Array, factor: jax.Array, rescale: str) -> jax.Array:
    """One leaf's cautious update (see the module docstring), in ``u``'s dtype."""
    x = u.astype(compute_dtype(u.dtype))
    real = jnp.finfo(x.dtype).dtype
    s = jnp.where(_agrees(x, g), jnp.ones((), real), scalar_like(factor, x))
    d = x.size
    if rescale == "count":  # d / (nnz + 1)
        scale = s * (d / (jnp.sum(s) + 1))
    else:  # 1 / max(mean(s), 1e-5)
        scale = s / jnp.maximum(jnp.sum(s) / d, _MEAN_FLOOR)
    return (x * scale).astype(u.dtype)


def cautious_mask(updates: Any, grads: Any, *, rescale: str = "count", factor: Any = 0.0) -> Any:
    """The Cautious mask applied leaf by leaf: ``updates`` masked and rescaled against ``grads``.

    The maths of :func:`cautious`, as a plain function on two trees of one structure (for a stage
    whose reference is not the gradient its own input saw).

    >>> import adamfx, jax.numpy as jnp
    >>> u, g = {"w": jnp.array([1.0, -1.0, 2.0, 2.0])}, {"w": jnp.ones(4)}
    >>> adamfx.cautious_mask(u, g, rescale="mean")["w"]  # kept where u g > 0, divided by their share 3 / 4
    Array([ 1.3333334, -0.       ,  2.6666667,  2.6666667], dtype=float32)
    """
    checks.check_choice("rescale", rescale, RESCALES)
    return jax.tree.map(lambda u, g: mask_leaf(u, g, factor, rescale), updates, grads)


class CautiousState(NamedTuple):
    inner: Any  # the state of the masked transform
    hyperparams: dict  # cautious_factor


@dataclasses.dataclass(frozen=True)
class Cautious(Stage):
    inner: GradientTransformation  # the core whose update is masked (a transform, not a Stage: see fused)
    rescale: str
    cautious_factor: float

    @property
    def elementwise(self) -> bool:  # the rescale sums over each leaf
        return False

    def init(self, params):
        return CautiousState(self.inner.init(params), hp.as_arrays(cautious_factor=self.cautious_factor))

    def update(self, updates, state, params=None, **extra_args):
        grads = updates
        out, inner = self.inner.update(grads, state.inner, params, **extra_args)
        factor = state.hyperparams["cautious_factor"]
        if isinstance(out, Moments):  # mask the numerator; normalize's positive denominator keeps the signs
            masked = out._replace(mu=cautious_mask(out.mu, out.grad, rescale=self.rescale, factor=factor))
        else:
            checks.check_same_structure(out, grads, "updates", "gradients", shapes=True)
            masked = cautious_mask(out, grads, rescale=self.rescale, factor=factor)
        return masked, CautiousState(inner, state.hyperparams)


def cautious(*transforms: GradientTransformation, rescale: str = "count", factor: float = 0.0):
    """Runs ``transforms`` (chained) on the gradient and masks their update against that gradient.

    ``u = transforms(g)``, then per leaf ``u <- u * s * d / (sum(s) + 1)`` (``rescale="count"``,
    the paper's code and pytorch-optimizer's ``cautious=True``) or ``u <- u * s / max(mean(s), 1e-5)``
    (``rescale="mean"``, lion-pytorch's cautious Lion), with ``s = 1[u g > 0] + factor 1[u g <= 0]``.

    Where it goes: around an optimizer's *core* -- after the gradient stages and a coupled L2 term
    (the mask compares with the gradient the core saw, ``g + wd p``, as pytorch-optimizer does),
    before a decoupled weight decay and :func:`adamfx.lr_decay` (which are not masked)::

        chain(add_decayed_weights(wd),                                # coupled L2, if any
              cautious(scale_by_moments(), bias_correction(), normalize()),
              lr_decay(lr))

    When the transforms emit :class:`adamfx.Moments` (e.g. ``scale_by_moments()`` alone), the mask
    applies to their ``mu`` against their ``grad``; a following :func:`normalize` divides by a
    positive root, which keeps the mask's decisions.

    Not elementwise (the rescale sums over each leaf): :func:`adamfx.fused` raises for it.
    State: the inner state and hyperparameter ``cautious_factor``. Used by ``adam``, ``adamw`` and
    ``lion`` with ``cautious=True``.

    >>> import adamfx, jax.numpy as jnp
    >>> tx, p = adamfx.cautious(adamfx.add_decayed_weights(1.0)), {"w": jnp.array([0.0, -2.0, 0.0, 0.0])}
    >>> g = {"w": jnp.array([1.0, 1.0, -1.0, 2.0])}
    >>> tx.update(g, tx.init(p), p)[0]["w"]  # u = g + p = (1, -1, -1, 2): u g > 0 on 3 of 4, scale 4 / (3 + 1)
    Array([ 1., -0., -1.,  2.], dtype=float32)
    """
    checks.check_choice("rescale", rescale, RESCALES)
    if not transforms:
        raise ValueError(
            "cautious() needs the transforms whose update it masks, "
            "e.g. cautious(scale_by_moments(), bias_correction(), normalize())."
        )
    return Cautious(chain(*transforms), rescale, factor).transform()
