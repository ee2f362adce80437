"""Optimizer state placed like the params, and ZeRO-1 state sharding.

An adamfx state holds parameter-shaped trees (the moments, AMSGrad's maximum,
accumulated gradients, a moving average of the params) and scalars (counts,
hyperparameters). :func:`state_shardings` gives each state leaf a
``NamedSharding`` on the params' mesh:

- a leaf that stands for a parameter (the parameter's key path appears in the
  leaf's key path, and the shapes agree) gets that parameter's sharding;
- every other leaf (scalars, quantisation scales) is replicated;
- in a :func:`adamfx.fused` state, a buffer kept whole matches its parameter by
  its group key (the parameter's key path), and a packed buffer of small
  leaves -- which mixes leaves placed differently -- is split across the mesh
  axes that give it the most shards and still divide it, so it costs each
  device about what (usually less than) its leaves' unfused state would (a
  fused layout cannot follow the leaves' shardings: with ``Auto`` mesh axes
  they are not known while ``jit`` traces, and the layout is rebuilt then);
- with ``zero_axis="data"`` every leaf is further split along that mesh axis on
  its first dimension that is not sharded yet and divides evenly, or else added
  to a dimension that is sharded already when that dimension still divides
  (``P("model")`` becomes ``P(("model", "data"))``): the state is partitioned
  across the data-parallel replicas even where the params are replicated (ZeRO
  stage 1, Rajbhandari et al., 2020). Each device then keeps about
  ``1 / mesh.shape["data"]`` of the state; XLA gathers the updates.

Nothing here depends on the stages: it works for any optax state, including
low-bit and wrapped ones. Outside ``jit`` an adamfx ``tx.init(params)`` already
places the moments like the params (``zeros_like``); inside ``jit`` with
``Auto`` mesh axes, pass ``out_shardings=state_shardings(...)`` (or call
:func:`init_sharded`) so the placement does not depend on XLA's propagation.

Multi-host: after ``jax.distributed.initialize()`` every process runs the same
program; build the mesh over ``jax.devices()`` (all hosts), create the params
with ``jax.jit(..., out_shardings=...)`` or ``jax.make_array_from_callback``,
and call the same :func:`init_sharded` and jitted step. Arrays are global;
each process holds only its addressable shards (:func:`bytes_per_device`
counts those), and orbax saves and restores them collectively.
"""

from __future__ import annotations

import math
from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec

from adamfx._src.execution.flat import leaf_key
from adamfx._src.execution.fused import FusedState


def _param_shardings(params: Any) -> list[tuple[tuple, tuple, NamedSharding, str]]:
    entries = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        sharding = getattr(leaf, "sharding", None)
        if not isinstance(sharding, NamedSharding):
            raise ValueError(
                f"params{jax.tree_util.keystr(path)} has sharding {sharding!r}: state_shardings needs every "
                "param placed with a jax.sharding.NamedSharding (jax.device_put(x, NamedSharding(mesh, spec)))."
            )
        entries.append((tuple(path), tuple(leaf.shape), sharding, leaf_key(path)))
    meshes = {entry[2].mesh for entry in entries}
    if len(meshes) != 1:
        raise ValueError(f"params are placed on {len(meshes)} meshes; state_shardings needs them all on one mesh.")
    return entries


def _contains(path: tuple, sub: tuple) -> bool:
    n = len(sub)
    return any(path[i : i + n] == sub for i in range(len(path) - n + 1))


def _names(path: tuple, key: str) -> bool:
    """Whether a dict key on ``path`` is ``key`` (a fused buffer kept whole is keyed by its param's path)."""
    return any(getattr(entry, "key", None) == key for entry in path)


def _param_spec(path: tuple, shape: tuple, entries) -> PartitionSpec | None:
    """The spec of the param this state leaf stands for (longest matching path), or ``None``."""
    matches = [
        (len(p), s)
        for p, param_shape, s, key in entries
        if param_shape == shape and (_contains(path, p) or _names(path, key))
    ]
    return max(matches, key=lambda m: m[0])[1].spec if matches else None


def _across_mesh(shape: tuple, mesh) -> PartitionSpec:
    """A 1-D buffer split across the mesh axes (in mesh order) with the most shards that divide it."""
    if len(shape) != 1:
        return PartitionSpec()
    names = mesh.axis_names
    subsets = [tuple(a for i, a in enumerate(names) if mask >> i & 1) for mask in range(1, 2 ** len(names))]
    dividing = [axes for axes in subsets if shape[0] % math.prod(mesh.shape[a] for a in axes) == 0]
    if not dividing:
        return PartitionSpec()
    return PartitionSpec(max(dividing, key=lambda axes: math.prod(mesh.shape[a] for a in axes)))


def _axes_of(spec: PartitionSpec) -> set:
    used = set()
    for entry in spec:
        used.update(entry if isinstance(entry, tuple) else (entry,))
    return used - {None}


def _with_axis(spec: PartitionSpec, shape: tuple, axis: str, mesh) -> PartitionSpec:
    """``spec`` with ``axis`` added on the first free dimension it divides, else appended to the first
    sharded dimension that its shards still divide (``P("model")`` -> ``P(("model", "data"))``)."""
    entries = list(spec) + [None] * (len(shape) - len(spec))
    if axis in _axes_of(spec):
        return spec
    size = mesh.shape[axis]
    for i, (dim, entry) in enumerate(zip(shape, entries, strict=True)):
        if entry is None and dim % size == 0:
            entries[i] = axis
            return PartitionSpec(*entries)
    for i, (dim, entry) in enumerate(zip(shape, entries, strict=True)):
        axes = () if entry is None else entry if isinstance(entry, tuple) else (entry,)
        if axes and dim % (math.prod(mesh.shape[a] for a in axes) * size) == 0:
            entries[i] = (*axes, axis)
            return PartitionSpec(*entries)
    return spec


def state_shardings(tx, params: Any, *, zero_axis: str | None = None) -> Any:
    """A ``NamedSharding`` for every leaf of ``tx.init(params)`` (see the module docstring).

    ``params`` are arrays (or ``jax.ShapeDtypeStruct``) placed with
    ``NamedSharding`` on one mesh. ``zero_axis`` names a mesh axis along which
    to split the state as well (ZeRO-1).

    >>> import adamfx, jax, jax.numpy as jnp
    >>> from jax.sharding import NamedSharding, PartitionSpec as P
    >>> mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    >>> params = {"w": jax.device_put(jnp.zeros((8, 16)), NamedSharding(mesh, P(None, "model")))}
    >>> shardings = adamfx.state_shardings(adamfx.adam(), params, zero_axis="data")
    >>> shardings[0].mu["w"].spec, shardings[0].count.spec
    (P('data', 'model'), P())
    """
    entries = _param_shardings(params)
    mesh = entries[0][2].mesh
    if zero_axis is not None and zero_axis not in mesh.shape:
        raise ValueError(
            f"zero_axis={zero_axis!r} is invalid: it must be None or one of the mesh axes {mesh.axis_names}."
        )
    shapes = jax.eval_shape(tx.init, params)

    def leaf_sharding(path, leaf, fused=False):
        shape = tuple(leaf.shape)
        spec = _param_spec(tuple(path), shape, entries)
        if spec is None:
            spec = _across_mesh(shape, mesh) if fused else PartitionSpec()
        if zero_axis is not None:
            spec = _with_axis(spec, shape, zero_axis, mesh)
        return NamedSharding(mesh, spec)

    def node_sharding(path, node):
        if isinstance(node, FusedState):
            inner = jax.tree_util.tree_map_with_path(lambda p, leaf: leaf_sharding(path + p, leaf, True), node.inner)
            return FusedState(inner)
        return leaf_sharding(path, node)

    is_fused = lambda node: isinstance(node, FusedState)
    return jax.tree_util.tree_map_with_path(node_sharding, shapes, is_leaf=is_fused)


def init_sharded(tx, params: Any, *, zero_axis: str | None = None) -> Any:
    """``tx.init(params)`` computed under ``jit`` and placed by :func:`state_shardings`.

    >>> import adamfx, jax, jax.numpy as jnp
    >>> from jax.sharding import Mesh, NamedSharding, PartitionSpec
    >>> rows = NamedSharding(Mesh(jax.devices()[:2], ("rows",)), PartitionSpec("rows"))
    >>> state = adamfx.init_sharded(adamfx.adam(), {"w": jax.device_put(jnp.ones((4, 3)), rows)})
    >>> state[0].mu["w"].sharding.spec, float(jnp.abs(state[0].mu["w"]).sum())  # split like w; zeros, as tx.init gives
    (P('rows',), 0.0)
    """
    return jax.jit(tx.init, out_shardings=state_shardings(tx, params, zero_axis=zero_axis))(params)


def bytes_per_device(tree: Any) -> dict[Any, int]:
    """Bytes that ``tree``'s arrays occupy on each (addressable) device, from their shards.

    >>> import adamfx, jax.numpy as jnp
    >>> sum(adamfx.bytes_per_device({"w": jnp.zeros(4)}).values())
    16
    """
    totals: dict[Any, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            totals[shard.device] = totals.get(shard.device, 0) + shard.data.nbytes
    return totals
