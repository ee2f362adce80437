"""Flat views of a parameter tree: one 1-D buffer per dtype group.

A :class:`Layout` records how the leaves of a tree are packed into a few flat
buffers: leaves are grouped by dtype (and, optionally, by extra boolean labels
such as a weight-decay mask), and each group is the concatenation of its
raveled leaves in tree order; a leaf kept whole (one too big to be worth
packing) is its own group and keeps its shape, so it keeps its sharding too.
The layout is plain static data (tree structure, shapes, dtypes, group keys), a
pure function of the tree's structure, shapes and dtypes and of the labels: it
hashes and compares by value, and it is rebuilt at trace time rather than kept
in any state.

Used by :func:`adamfx.fused` (optimizer state kept flat) and
:func:`adamfx.flat_params` (parameters kept flat in a training loop).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from adamfx._src.core.base import BoundMethod


def leaf_key(path) -> str:
    """The group key of a leaf kept whole: its key path (``"['dense']['kernel']"``).

    A trailing ``.value`` (an ``nnx.Variable`` or a boxed linen param around the array) is
    dropped, so the wrapped params at ``init`` and the bare gradients at ``update`` agree.
    """
    key = jax.tree_util.keystr(tuple(path))
    return key.removesuffix(".value") or key


def _visibly_sharded(leaf) -> bool:
    """Whether ``leaf``'s type (``jax.typeof``: the same at trace time and outside) says it is sharded."""
    try:
        spec = jax.typeof(leaf).sharding.spec
    except (AttributeError, TypeError):
        return False
    return any(entry is not None for entry in spec)


def group_key(dtype, labels: tuple[bool, ...] = ()) -> str:
    """The name of a packed group: its dtype, then one digit per label (``"float32"``, ``"float32:10"``)."""
    name = jnp.dtype(dtype).name
    return name if not labels else name + ":" + "".join("1" if label else "0" for label in labels)


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a tree's leaves are packed into flat buffers, one per group.

    Attributes:
      treedef: the structure of the tree.
      shapes, dtypes: per leaf, in tree order.
      keys: per leaf, the name of the group it belongs to: its dtype (and labels)
        when packed with others, its path (``"['dense']['kernel']"``) when alone.
      labels: ``(key, labels)`` pairs: the boolean labels behind each group key.
      whole: the keys of the leaves kept whole (their buffer has the leaf's shape).
    """

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[Any, ...]
    keys: tuple[str, ...]
    labels: tuple[tuple[str, tuple[bool, ...]], ...]
    whole: tuple[str, ...] = ()

    @classmethod
    def of(cls, tree: Any, label_trees: tuple[Any, ...] = (), pack_below: int | None = None) -> Layout:
        """The layout of ``tree``.

        Leaves are grouped by dtype; each of ``label_trees`` (a tree of Python
        bools) splits groups further. A leaf of ``pack_below`` elements or more
        gets a group of its own and keeps its shape (``None``: every leaf is packed), and so
        does a leaf whose type shows it sharded (``Explicit`` mesh axes): packing it would
        need a reshard; with ``Auto`` axes the type shows no sharding.
        """
        paths_leaves, treedef = jax.tree.flatten_with_path(tree)
        per_leaf = [treedef.flatten_up_to(labels) for labels in label_trees]
        leaf_labels = [tuple(bool(labels[i]) for labels in per_leaf) for i in range(len(paths_leaves))]
        shapes = tuple(tuple(np.shape(leaf)) for _, leaf in paths_leaves)
        dtypes = tuple(jnp.dtype(jnp.result_type(leaf)) for _, leaf in paths_leaves)
        alone = [
            (pack_below is not None and math.prod(shape) >= pack_below) or _visibly_sharded(leaf)
            for shape, (_, leaf) in zip(shapes, paths_leaves, strict=True)
        ]
        keys = tuple(
            leaf_key(path) if own else group_key(dtype, labels)
            for (path, _), dtype, labels, own in zip(paths_leaves, dtypes, leaf_labels, alone, strict=True)
        )
        labels = tuple(sorted(dict(zip(keys, leaf_labels, strict=True)).items()))
        whole = tuple(sorted(key for key, own in zip(keys, alone, strict=True) if own))
        return cls(treedef, shapes, dtypes, keys, labels, whole)

    @property
    def groups(self) -> tuple[str, ...]:
        """The group keys, sorted."""
        return tuple(key for key, _ in self.labels)

    def _wraps(self, treedef) -> bool:
        """Whether this layout's structure is ``treedef`` with some leaves wrapped in one-leaf
        nodes (a model's ``nnx.Variable`` at ``init``, the bare arrays at ``update``)."""
        example = jax.tree.unflatten(self.treedef, range(len(self.keys)))
        try:
            pieces = treedef.flatten_up_to(example)
        except (ValueError, TypeError):
            return False
        return [jax.tree.leaves(piece) for piece in pieces] == [[i] for i in range(len(self.keys))]

    def _leaves(self, tree: Any, what: str) -> list[Any]:
        leaves, treedef = jax.tree.flatten(tree)
        if treedef != self.treedef and not self._wraps(treedef):
            raise ValueError(
                f"{what} do not match the params of the layout.\n  {what}: {treedef}\n  params: {self.treedef}"
            )
        for leaf, shape, dtype in zip(leaves, self.shapes, self.dtypes, strict=True):
            if tuple(np.shape(leaf)) != shape or jnp.result_type(leaf) != dtype:
                got = f"{jnp.result_type(leaf).name}{list(np.shape(leaf))}"
                raise ValueError(
                    f"{what} do not match the params of the layout: a leaf is {got} "
                    f"where the params have {dtype.name}{list(shape)}."
                )
        return leaves

    def flatten(self, tree: Any, what: str = "tree") -> dict[str, jax.Array]:
        """``{group key: buffer}``: each group's leaves raveled and concatenated in tree order
        (a leaf kept whole: the leaf itself)."""
        leaves = self._leaves(tree, what)
        members = {key: [] for key in self.groups}
        for key, leaf in zip(self.keys, leaves, strict=True):
            members[key].append(jnp.asarray(leaf) if key in self.whole else jnp.ravel(leaf))
        return {key: jnp.concatenate(parts) if len(parts) > 1 else parts[0] for key, parts in members.items()}

    def unflatten(self, flat: dict[str, jax.Array], treedef: Any = None, *, opaque_offsets: bool = False) -> Any:
        """The tree whose leaves are the pieces of the flat buffers (inverse of :meth:`flatten`).

        ``treedef`` (default: the layout's) is the structure to build, e.g. that of the gradients.
        ``opaque_offsets`` cuts the pieces at offsets XLA:CPU cannot see as constants (see
        :func:`cut`): :func:`adamfx.fused` asks for it, so its step compiles one kernel per leaf shape.
        """
        if not isinstance(flat, dict) or set(flat) != set(self.groups):
            raise ValueError(
                f"expected a dict of flat buffers with keys {list(self.groups)}, got "
                f"{sorted(flat) if isinstance(flat, dict) else type(flat).__name__}."
            )
        pieces = {}
        for key in self.groups:
            sizes = [math.prod(s) for k, s in zip(self.keys, self.shapes, strict=True) if k == key]
            split = cut if opaque_offsets else lax.split
            pieces[key] = iter(split(flat[key], sizes) if len(sizes) > 1 else [flat[key]])
        leaves = [next(pieces[key]).reshape(shape) for key, shape in zip(self.keys, self.shapes, strict=True)]
        return jax.tree.unflatten(self.treedef if treedef is None else treedef, leaves)


jax.tree_util.register_static(Layout)


def cut(buffer: jax.Array, sizes: list[int]) -> list[jax.Array]:
    """``lax.split(buffer, sizes)``, with offsets that XLA:CPU does not compile into each piece's kernel.

    XLA fuses each piece's slice into the kernel that consumes it (``p + u[i:i+n]``, the
    ``apply_updates`` after the step). With the offsets as constants every leaf's kernel is
    distinct, and XLA:CPU compiles each distinct kernel on its own (~15 ms of CPU each: a
    400-leaf ``fused`` step compiled in 2-3x the time of the unfused one). Here the offsets come
    out of a ``while`` loop that runs zero times (its condition, ``min(max(bits, 0), 0) != 0`` on
    the bits of the buffer's first element, is false for every value, but XLA cannot fold it), so
    they are the same numbers at run time but opaque to the compiler: each piece is a
    ``dynamic_slice`` at an offset held in a scalar, and leaves of one size share one kernel.
    CPU only (``lax.platform_dependent``): elsewhere a while loop's condition is read back by the
    host, which would stall the step, so other platforms keep constant offsets.
    """
    if len(buffer.shape) != 1 or not 0 < sum(sizes) < 2**31:  # int32 offsets, a first element
        return list(lax.split(buffer, sizes))
    starts = tuple(jnp.int32(start) for start in np.cumsum([0, *sizes[:-1]]))
    offsets = lax.platform_dependent(buffer, starts, cpu=_opaque, default=lambda buffer, starts: starts)
    return [lax.dynamic_slice(buffer, (start,), (size,)) for start, size in zip(offsets, sizes, strict=True)]


def _opaque(buffer: jax.Array, values: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    """``values``, passed through a ``while`` loop that never runs (see :func:`cut`)."""
    bits = lax.bitcast_convert_type(jnp.real(buffer[0]).astype(jnp.float32), jnp.int32)
    zero = jnp.minimum(jnp.maximum(bits, 0), 0)  # 0 for every value

    def body(carry):
        step, *rest = carry
        return (step + 1, *(value + step for value in rest))

    return tuple(lax.while_loop(lambda carry: carry[0] != 0, body, (zero, *values))[1:])


def flat_params(params: Any) -> tuple[dict[str, jax.Array], Any]:
    """Packs ``params`` into one flat buffer per dtype; returns ``(flat, unflatten)``.

    ``flat`` is a dict ``{dtype name: 1-D array}`` and ``unflatten(flat)`` gives
    back the tree (inside ``jit`` the pieces are slices of the buffers). Keep the
    parameters flat in a functional training loop and view them as a tree inside
    the step, so the jitted step passes O(1) buffers instead of one per leaf::

        flat, unflatten = adamfx.flat_params(params)
        loss = lambda flat, batch: model_loss(unflatten(flat), batch)
        grads = jax.grad(loss)(flat, batch)            # flat too
        updates, state = tx.update(grads, state, flat)  # any optimizer

    ``unflatten`` compares by value, so it may be a static argument of ``jit``.
    Any optimizer works on ``flat``; a per-leaf ``weight_decay_mask`` does not
    (it sees one leaf per dtype). When it pays off: see ``benchmarks/RESULTS.md``.

    >>> import adamfx, jax.numpy as jnp
    >>> flat, unflatten = adamfx.flat_params({"b": jnp.zeros(2), "w": jnp.ones((2, 2))})
    >>> flat["float32"]  # b, then w, in one buffer per dtype
    Array([0., 0., 1., 1., 1., 1.], dtype=float32)
    >>> unflatten(flat)["w"]
    Array([[1., 1.],
           [1., 1.]], dtype=float32)
    """
    layout = Layout.of(params)
    return layout.flatten(params, "params"), BoundMethod(layout, "unflatten")
