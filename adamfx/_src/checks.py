"""Validation helpers: hyperparameters at construction, trees at ``init``/``update``.

Every message names the argument, the value it got and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np


def as_python_scalar(value: Any) -> Any:
    """A concrete 0-d NumPy/JAX array as the Python number it holds; anything else unchanged.

    Stages are frozen dataclasses compared and hashed by value; arrays are
    neither hashable nor comparable to a bool, so an argument such as
    ``learning_rate=jnp.array(1e-3)`` is stored as the float it holds. Traced
    values are left alone.
    """
    if isinstance(value, (np.ndarray, np.generic, jax.Array)) and not isinstance(value, jax.core.Tracer):
        if np.shape(value) == ():
            return value.item()
    return value


def _is_concrete_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
        return False
    return True


def check_range(
    name: str,
    value: Any,
    low: float,
    high: float = math.inf,
    *,
    high_inclusive: bool = False,
) -> None:
    """Raises ``ValueError`` unless ``low <= value < high`` (or ``<= high``).

    Traced or array values that cannot be read as a Python number are not
    checked here (they arrive through :func:`adamfx.set_hyperparams` inside jit).
    """
    if value is None or not _is_concrete_number(value):
        return
    number = float(value)
    upper_ok = number <= high if high_inclusive else number < high
    if math.isnan(number) or number < low or not upper_ok:
        bracket = "]" if high_inclusive else ")"
        raise ValueError(f"{name}={value!r} is invalid: it must be a number in [{low}, {high}{bracket}.")


def check_learning_rate(value: Any, name: str = "learning_rate") -> None:
    """A learning rate is a non-negative number or a schedule ``count -> lr``."""
    if callable(value):
        return
    if not _is_concrete_number(value):
        raise ValueError(f"{name}={value!r} is invalid: it must be a non-negative number or a schedule callable.")
    check_range(name, value, 0.0)


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is invalid: it must be one of {', '.join(map(repr, allowed))}.")


def check_same_structure(tree: Any, reference: Any, what: str, reference_what: str) -> None:
    """Raises a ``ValueError`` showing both structures when ``tree`` does not match.

    ``reference`` may hold subtrees where ``tree`` has leaves (quantised state).
    """
    try:
        jax.tree.map(lambda *_: None, tree, reference)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"{what} do not match the {reference_what}.\n"
            f"  {what}: {jax.tree.structure(tree)}\n"
            f"  {reference_what}: {jax.tree.structure(reference)}\n"
            f"  ({error})"
        ) from None


def resolve_mask(mask: Any, params: Any, name: str = "mask") -> Any:
    """Returns the boolean mask tree for ``params``, checking its structure.

    ``mask`` is a pytree of bools with the structure of ``params`` or a callable
    ``params -> such a pytree``.
    """
    tree = mask(params) if callable(mask) else mask
    if jax.tree.structure(tree) != jax.tree.structure(params):
        raise ValueError(
            f"{name} does not match the params: a mask must be a pytree of bools with the "
            f"same structure as the params (or a callable returning one).\n"
            f"  {name}: {jax.tree.structure(tree)}\n"
            f"  params: {jax.tree.structure(params)}"
        )
    return tree


def freeze(tree: Any) -> Any:
    """A hashable stand-in for a pytree of Python values (masks), or callables as they are."""
    if tree is None or callable(tree):
        return tree
    leaves, treedef = jax.tree.flatten(tree)
    return FrozenTree(treedef, tuple(as_python_scalar(leaf) for leaf in leaves))


class FrozenTree(tuple):
    """``(treedef, leaves)``: a pytree of plain values that can live in a frozen dataclass."""

    def __new__(cls, treedef, leaves):
        return super().__new__(cls, (treedef, leaves))

    def thaw(self) -> Any:
        return jax.tree.unflatten(self[0], self[1])


def thaw(frozen: Any) -> Callable | Any:
    return frozen.thaw() if isinstance(frozen, FrozenTree) else frozen
