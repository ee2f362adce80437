"""Frozen pytrees: hashable stand-ins for masks and labels, so that they fit in a frozen dataclass.

A stage compares and hashes by value (see :mod:`adamfx._src.core.base`), so a mask pytree is kept as a
:class:`FrozenTree` (``freeze``) and turned back into a pytree when used (``thaw``); ``check_mask`` and
``resolve_mask`` validate a mask at construction and against the params.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from adamfx._src.core.checks import as_python_scalar


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


def check_mask(name: str, frozen: Any) -> None:
    """Raises ``ValueError`` unless a frozen mask holds bools (one per leaf, or a bool array per leaf)."""
    if not isinstance(frozen, FrozenTree):
        if frozen is not None and not callable(frozen):
            raise ValueError(f"{name}={frozen!r} is invalid: it must be a pytree of bools, a callable or None.")
        return
    for leaf in frozen[1]:
        if not (isinstance(leaf, (bool, np.bool_)) or (isinstance(leaf, FrozenArray) and leaf.array.dtype == bool)):
            raise ValueError(
                f"{name} has a leaf {leaf!r}: a mask holds a bool (or an array of bools) per parameter leaf."
            )


def freeze(tree: Any) -> Any:
    """A hashable stand-in for a pytree of Python values and arrays (masks), or callables as they are."""
    if tree is None or callable(tree):
        return tree
    leaves, treedef = jax.tree.flatten(tree)
    frozen = (as_python_scalar(leaf) for leaf in leaves)
    return FrozenTree(treedef, tuple(FrozenArray(x) if isinstance(x, (np.ndarray, jax.Array)) else x for x in frozen))


class FrozenArray:
    """A concrete array that compares and hashes by value (``==`` on arrays is elementwise)."""

    __slots__ = ("array",)

    def __init__(self, array: Any):
        self.array = np.array(array)
        self.array.flags.writeable = False

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, FrozenArray):
            return NotImplemented
        a, b = self.array, other.array
        return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))

    def __hash__(self) -> int:
        return hash((self.array.shape, self.array.dtype.str, self.array.tobytes()))

    def __repr__(self) -> str:
        return repr(self.array)


class FrozenTree(tuple):
    """``(treedef, leaves)``: a pytree of plain values that can live in a frozen dataclass."""

    def __new__(cls, treedef, leaves):
        return super().__new__(cls, (treedef, leaves))

    def thaw(self) -> Any:
        return jax.tree.unflatten(self[0], [x.array if isinstance(x, FrozenArray) else x for x in self[1]])


def thaw(frozen: Any) -> Callable | Any:
    return frozen.thaw() if isinstance(frozen, FrozenTree) else frozen
