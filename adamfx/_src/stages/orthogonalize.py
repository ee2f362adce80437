"""Muon's matrix stages: Newton-Schulz orthogonalization, the shape factor, PyTorch's Nesterov mix.

Muon (Jordan et al., 2024) replaces the momentum ``M`` of each weight matrix by
the nearest semi-orthogonal matrix, approximately ``U V^T`` for ``M = U S V^T``,
computed by a few iterations of a quintic Newton-Schulz polynomial::

    X_0 = M / ||M||_F                               (eps as a clamp or an addend)
    A_k = X_k X_k^T
    X_{k+1} = a X_k + (b A_k + c A_k A_k) X_k       k = 0 .. ns_steps - 1

on the wide orientation (``M^T`` when it has more rows than columns, so that
``A_k`` is the smaller Gram matrix). Leading axes are a batch of matrices
(stacked layers), as optax's ``MuonDimensionNumbers`` allows; the last two are
(rows, cols) = (fan_in, fan_out) of ``x @ W``.

- :func:`orthogonalize` runs the iteration (not elementwise: :func:`adamfx.fused` refuses it);
- :func:`scale_by_shape` multiplies by the shape factor of the convention
  (Jordan's ``sqrt(max(1, rows/cols))`` in PyTorch, its transpose in optax, or
  Liu et al.'s (2025) consistent RMS ``consistent_rms sqrt(max(rows, cols))``);
- :func:`nesterov_lerp` is PyTorch's Nesterov look-ahead of an EMA buffer.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from adamfx._src.core import checks
from adamfx._src.core import hyperparams as hp
from adamfx._src.core.base import Stage, Stateless
from adamfx._src.core.numerics import compute_dtype, dtype_of_kind, scalar_like
from adamfx._src.stages import eps as eps_vocabulary
from adamfx._src.stages.moments import Moments, require_moments

PLACEMENTS = ("outside", "clamp")  # the eps vocabulary of adamfx._src.stages.eps, applied to ||X||_F


def newton_schulz(x: jax.Array, coefficients: tuple, steps: int, eps: jax.Array, eps_placement: str) -> jax.Array:
    """The quintic Newton-Schulz iteration on the last two axes of ``x`` (in ``x``'s dtype).

    Products and sums accumulate in at least float32 and round to ``x``'s dtype once per
    product-and-add (as PyTorch's bfloat16 ``addmm`` does); for float32/float64 that is plain arithmetic.
    """
    a, b, c = coefficients
    dtype = x.dtype
    acc = jnp.promote_types(dtype, jnp.float32)

    def mm(p, q):
        return jnp.matmul(p, q, preferred_element_type=acc)

    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = jnp.swapaxes(x, -1, -2)
    xa = x.astype(acc)
    norm = jnp.sqrt(jnp.sum(xa * xa, axis=(-2, -1), keepdims=True)).astype(dtype)
    eps = scalar_like(eps, x)
    x = x / (jnp.maximum(norm, eps) if eps_placement == "clamp" else norm + eps)

    def iteration(_, x):
        gram = mm(x, jnp.swapaxes(x, -1, -2)).astype(dtype)  # A = X X^T
        poly = (b * gram.astype(acc) + c * mm(gram, gram)).astype(dtype)  # b A + c A^2
        return (a * x.astype(acc) + mm(poly, x)).astype(dtype)  # X <- a X + (b A + c A^2) X

    if isinstance(steps, int):  # unrolled
        for k in range(steps):
            x = iteration(k, x)
    else:  # a traced count (optax.inject_hyperparams injects ns_steps)
        x = jax.lax.fori_loop(0, steps, iteration, x)
    return jnp.swapaxes(x, -1, -2) if tall else x


class OrthogonalizeState(NamedTuple):
    hyperparams: dict  # eps


@dataclasses.dataclass(frozen=True)
class NewtonSchulz(Stage):
    ns_coefficients: tuple[float, float, float]
    ns_steps: int
    eps: float
    eps_placement: str  # "clamp": X / max(||X||_F, eps) (PyTorch); "outside": X / (||X||_F + eps) (Keras, optax)
    ns_dtype: str  # the dtype the iteration runs in
    elementwise: ClassVar[bool] = False  # a matrix function of each leaf

    def __post_init__(self):
        super().__post_init__()
        eps_vocabulary.check_placement(self.eps_placement, PLACEMENTS)

    def init(self, params):
        return OrthogonalizeState(hp.as_arrays(eps=self.eps))

    def update(self, updates, state, params=None, **extra_args):
        if isinstance(updates, Moments):
            updates = jax.tree.map(
                lambda m, g: m.astype(g.dtype), require_moments(updates, "orthogonalize").mu, updates.grad
            )

        def leaf(path, u):
            if u.ndim < 2:
                raise ValueError(
                    f"orthogonalize: leaf {jax.tree_util.keystr(path)} has shape {u.shape}; Newton-Schulz needs a "
                    "matrix (or a stack of matrices): send it to Adam (muon's muon_mask)."
                )
            x = newton_schulz(
                u.astype(self.ns_dtype),
                self.ns_coefficients,
                self.ns_steps,
                state.hyperparams["eps"],
                self.eps_placement,
            )
            return x.astype(u.dtype)

        return jax.tree_util.tree_map_with_path(leaf, updates), state


def orthogonalize(
    ns_coefficients: tuple[float, float, float] = (3.4445, -4.7750, 2.0315),
    ns_steps: int = 5,
    eps: float = 1e-7,
    *,
    eps_placement: str = "outside",
    ns_dtype="float32",
):
    """Newton-Schulz orthogonalization of each matrix leaf (Jordan et al., 2024), see the module docstring.

    Takes the :class:`adamfx.Moments` of a moments stage (its ``mu``) or
    parameter-shaped updates (a :func:`adamfx.trace` buffer). ``eps_placement``:
    ``"clamp"`` divides by ``max(||X||_F, eps)`` (PyTorch), ``"outside"`` by
    ``||X||_F + eps`` (Keras, optax). ``ns_dtype``: the iteration's dtype
    (float32; PyTorch runs it in bfloat16). ``ns_coefficients`` (a, b, c) and
    ``ns_steps`` are fixed at construction (the loop is unrolled; a traced ``ns_steps``, as
    ``optax.inject_hyperparams`` passes, runs as a ``fori_loop``). State: ``eps``.
    Not elementwise. Used by :func:`adamfx.muon`.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.orthogonalize((1.5, -0.5, 0.0), ns_steps=30)  # the cubic iteration converges to U V^T
    >>> tx.update({"w": jnp.array([[3.0, 0.0], [0.0, 4.0]])}, tx.init(None))[0]["w"].round(4)  # U V^T of diag(3, 4)
    Array([[1., 0.],
           [0., 1.]], dtype=float32)
    """
    coefficients = tuple(ns_coefficients) if isinstance(ns_coefficients, (tuple, list)) else ()
    if len(coefficients) != 3 or not all(checks.is_concrete(c) and math.isfinite(c) for c in coefficients):
        raise ValueError(f"ns_coefficients={ns_coefficients!r} is invalid: it must be three finite numbers (a, b, c).")
    ns_steps = checks.as_python_scalar(ns_steps)
    traced = isinstance(ns_steps, jax.Array) and not checks.is_concrete(ns_steps)
    traced = traced and jnp.issubdtype(jnp.result_type(ns_steps), jnp.integer)
    if not traced and (isinstance(ns_steps, bool) or not isinstance(ns_steps, int) or ns_steps < 1):
        raise ValueError(f"ns_steps={ns_steps!r} is invalid: it must be an int >= 1.")
    dtype = dtype_of_kind(ns_dtype, jnp.floating)
    if dtype is None:
        raise ValueError(f"ns_dtype={ns_dtype!r} is invalid: it must be a real JAX float dtype (jnp.float32, ...).")
    a, b, c = (float(c) for c in coefficients)
    return NewtonSchulz((a, b, c), ns_steps, eps, eps_placement, dtype.name).transform()


class ScaleByShapeState(NamedTuple):
    hyperparams: dict  # consistent_rms (when on)


SHAPE_RULES = ("rows/cols", "cols/rows", "none")


def shape_factor(shape: tuple[int, ...], rule: str) -> float:
    """``sqrt(max(1, rows/cols))``, ``sqrt(max(1, cols/rows))`` or 1, for the last two axes of ``shape``."""
    rows, cols = shape[-2], shape[-1]
    ratio = {"rows/cols": rows / cols, "cols/rows": cols / rows, "none": 1.0}[rule]
    return math.sqrt(max(1.0, ratio))


@dataclasses.dataclass(frozen=True)
class ScaleByShape(Stage):
    rule: str  # the width rule, when consistent_rms is None
    consistent_rms: float | None

    def init(self, params):
        values = {} if self.consistent_rms is None else {"consistent_rms": self.consistent_rms}
        return ScaleByShapeState(hp.as_arrays(**values))

    def update(self, updates, state, params=None, **extra_args):
        def leaf(u):
            x = u.astype(compute_dtype(u.dtype))
            if self.consistent_rms is None:
                return (shape_factor(u.shape, self.rule) * x).astype(u.dtype)
            rms = scalar_like(state.hyperparams["consistent_rms"], x)
            return (rms * math.sqrt(max(u.shape[-2], u.shape[-1])) * x).astype(u.dtype)

        return jax.tree.map(leaf, updates), state


def scale_by_shape(rule: str = "rows/cols", consistent_rms: float | None = None):
    """Multiplies each matrix update by its shape factor (rows, cols: its last two axes).

    ``consistent_rms=None``: the width rule, ``"rows/cols"`` ``sqrt(max(1, rows/cols))``
    (Jordan et al.; PyTorch's ``adjust_lr_fn="original"``), ``"cols/rows"``
    ``sqrt(max(1, cols/rows))`` (optax: fan_out / fan_in) or ``"none"`` (1; Keras with
    ``rms_rate=None``). A number: ``consistent_rms * sqrt(max(rows, cols))``, the update
    RMS of AdamW (Liu et al., 2025; 0.2 is PyTorch's ``"match_rms_adamw"`` and
    Keras's ``rms_rate``). State: ``consistent_rms`` (when a number).

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.scale_by_shape()
    >>> tx.update({"w": jnp.ones((4, 1))}, tx.init(None))[0]["w"].ravel()  # sqrt(max(1, 4 / 1))
    Array([2., 2., 2., 2.], dtype=float32)
    """
    checks.check_choice("rule", rule, SHAPE_RULES)
    return ScaleByShape(rule, consistent_rms).transform()


@dataclasses.dataclass(frozen=True)
class NesterovLerp(Stateless):
    def update(self, updates, state, params=None, **extra_args):
        moments = require_moments(updates, "nesterov_lerp")
        c = moments.one_minus_b1  # 1 - momentum

        def leaf(m, g):  # g + mu (m - g) = mu m + (1 - mu) g
            g = g.astype(compute_dtype(g.dtype))
            return scalar_like(1 - c, m) * m + scalar_like(c, g) * g

        return moments._replace(mu=jax.tree.map(leaf, moments.mu, moments.grad)), state


def nesterov_lerp():
    """PyTorch Muon's Nesterov look-ahead of an EMA buffer: ``m <- g + mu (m - g) = mu m + (1 - mu) g``.

    ``mu`` is the moments stage's rate (``1 - one_minus_b1`` of the :class:`adamfx.Moments`),
    without bias correction (optax's corrected form is :func:`adamfx.nesterov_momentum`). No state.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.chain(adamfx.scale_by_moments(0.5, None), adamfx.nesterov_lerp())
    >>> tx.update({"w": jnp.array([2.0])}, tx.init({"w": jnp.zeros(1)}))[0].mu["w"]  # m = 1: 0.5 * 1 + 0.5 * 2
    Array([1.5], dtype=float32)
    """
    return NesterovLerp().transform()
