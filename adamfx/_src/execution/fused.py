"""``fused``: run an elementwise optimizer on a few flat buffers instead of the parameter tree.

Every adamfx stage is tree-generic, and most treat each element on its own
(``Stage.elementwise``). For those, updating a tree of N leaves is the same
arithmetic as updating one flat buffer holding all of them, but the flat form
costs one loop per dtype instead of one per leaf and keeps O(1) state buffers.
``fused(tx)`` therefore runs the *same* inner transform on ``{group: flat
buffer}`` (see :mod:`adamfx._src.execution.flat`): at ``init`` it packs the parameters
once and keeps the inner state over the flat buffers; at ``update`` it packs
the gradients, runs the inner update once per group and cuts the flat updates
back into parameter-shaped leaves.

The state is a plain pytree, ``FusedState(inner)``: the layout (which leaf goes
where) is a pure function of the tree structure, shapes, dtypes and masks, so
``init`` and ``update`` each rebuild it at trace time from the params (or the
gradients) and nothing static sits in the state; flax.serialization and orbax
save it like any other state. A leaf kept whole (``pack_below`` elements or
more) keeps its shape, hence its sharding: :func:`adamfx.state_shardings`
places it like its parameter, and splits the packed buffers of small leaves
across the mesh (see :mod:`adamfx._src.execution.sharding`).

A stage whose decision is per leaf, through a ``mask`` field (the weight-decay
mask), is handled by grouping: leaves are grouped by (dtype, mask values) and
the stage sees one boolean per group. Any other stage that is not elementwise
(or a transform that is not an adamfx stage) is rejected when ``fused`` is built.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, NamedTuple, cast

import jax
import numpy as np

from adamfx._src.core import checks, frozen
from adamfx._src.core.base import Chain, GradientTransformation, Stage, like_gradients, require_stage, stage_of
from adamfx._src.execution.flat import Layout

# Leaves this large (in elements) keep a buffer of their own; smaller ones are packed.
# Packing costs a copy of the gradients and of the updates (about 16 of the 40 bytes per
# parameter an unfused step moves on CPU) and saves per-leaf overhead (buffers passed to
# the jitted step, one loop each): on a 2-core CPU it paid off per call up to ~2^13
# elements per leaf and lost from 2^14 on (benchmarks/RESULTS.md).
PACK_BELOW = 2**12


class FusedState(NamedTuple):
    inner: Any  # the wrapped optimizer's state over the flat buffers {group key: buffer}


def _is_masked(stage: Stage) -> bool:
    return not stage.elementwise and getattr(stage, "mask", None) is not None


def _parts(stage: Stage) -> dict[str, Stage]:
    """The stages a composite stage is made of (``DecoupledWeightDecay``: its weight decay and rate)."""
    fields = {field.name: getattr(stage, field.name) for field in dataclasses.fields(stage)}
    return {name: value for name, value in fields.items() if isinstance(value, Stage)}


def _leaf_stages(stage: Stage | None, tx: GradientTransformation) -> list[Stage]:
    """The leaf stages in chain order; raises for anything ``fused`` cannot run flat."""
    if stage is None:
        raise ValueError(
            f"fused(tx) is invalid: {getattr(tx.init, '__qualname__', type(tx).__name__)} is not an adamfx stage, "
            "so it may not be elementwise. "
            "Wrap only the adamfx part, e.g. optax.chain(optax.clip_by_global_norm(1.0), adamfx.fused(adamfx.adam()))."
        )
    if isinstance(stage, Chain):
        return [leaf for member in stage.transforms for leaf in _leaf_stages(stage_of(member), member)]
    if _parts(stage):
        return [leaf for part in _parts(stage).values() for leaf in _leaf_stages(part, tx)]
    if not stage.elementwise and not _is_masked(stage):
        raise ValueError(
            f"fused(tx) is invalid: stage {type(stage).__name__} needs per-leaf shapes (it is not elementwise), "
            "so it cannot run on flat buffers. Use the optimizer unfused."
        )
    return [stage]


def _stages(tx: GradientTransformation) -> list[Stage]:
    return _leaf_stages(stage_of(tx), tx)


def _with_group_masks(stage: Stage, layout: Layout, counter) -> Stage:
    """``stage`` with its i-th masked leaf stage's mask replaced by ``{group key: label i}``."""
    if isinstance(stage, Chain):
        members = tuple(_with_group_masks(require_stage(t), layout, counter).transform() for t in stage.transforms)
        return Chain(members)
    if _parts(stage):
        parts = {name: _with_group_masks(part, layout, counter) for name, part in _parts(stage).items()}
        return dataclasses.replace(stage, **parts)
    if not _is_masked(stage):
        return stage
    index = next(counter)
    return dataclasses.replace(stage, mask=frozen.freeze({key: labels[index] for key, labels in layout.labels}))


def _mask_labels(stages: list[Stage], params: Any) -> tuple[Any, ...]:
    trees = []
    for stage in stages:
        mask = getattr(stage, "mask", None) if _is_masked(stage) else None
        if mask is None:
            continue
        tree = frozen.resolve_mask(frozen.thaw(mask), params, "mask")
        for value in jax.tree.leaves(tree):
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(
                    f"fused(tx) needs the {type(stage).__name__} mask as Python bools (one per leaf) to group "
                    f"leaves by it; got a leaf {value!r}."
                )
        trees.append(tree)
    return tuple(trees)


@dataclasses.dataclass(frozen=True)
class Fused(Stage):
    inner: GradientTransformation
    pack_below: int | None

    def _grouped(self, layout: Layout) -> GradientTransformation:
        if not any(_is_masked(stage) for stage in _stages(self.inner)):
            return self.inner
        return _with_group_masks(require_stage(self.inner), layout, itertools.count()).transform()

    def layout(self, tree: Any) -> Layout:
        """How the leaves of ``tree`` (the params, or gradients shaped like them) map to flat buffers."""
        return Layout.of(tree, _mask_labels(_stages(self.inner), tree), self.pack_below)

    def init(self, params):
        layout = self.layout(params)
        return FusedState(self._grouped(layout).init(layout.flatten(params, "params")))

    def update(self, updates, state, params=None, **extra_args):
        if not isinstance(state, FusedState):
            raise ValueError(f"fused: expected the FusedState built by init, got {type(state).__name__}.")
        layout = self.layout(updates if params is None else params)
        flat_params = None if params is None else layout.flatten(params, "params")
        grads = updates
        if params is not None and jax.tree.structure(updates) == jax.tree.structure(params):
            updates = checks.promote_to(updates, params)  # bfloat16 gradients of float32 params: float32, as unfused
        try:
            flat_updates, inner = self._grouped(layout).update(
                layout.flatten(updates, "updates"), state.inner, flat_params, **extra_args
            )
        except checks.TreeMismatchError as error:
            if params is not None:
                raise
            raise ValueError(  # the buffers were laid out from the gradients: their keys are not the user's
                "fused: the gradients do not match the state built by init -- a leaf's shape or dtype differs "
                "from its parameter's (without params the buffers are laid out from the gradients, so the "
                f"mismatch shows on them; pass the params to update to have the leaf named): {error}"
            ) from error
        if not isinstance(flat_updates, dict):
            raise TypeError(
                f"fused(tx): tx must emit parameter-shaped updates, it emitted {type(flat_updates).__name__}; "
                "wrap a whole optimizer (its chain must end with a stage such as normalize or lr_decay)."
            )
        cut = layout.unflatten(cast(dict, flat_updates), jax.tree.structure(updates), opaque_offsets=True)
        return like_gradients(cut, grads), FusedState(inner)


def fused(tx: GradientTransformation, *, pack_below: int | None = PACK_BELOW) -> GradientTransformation:
    """Runs the elementwise adamfx optimizer ``tx`` on a few flat buffers instead of one array per leaf.

    The result is an optax transform with the same updates as ``tx`` (the same
    arithmetic, element for element) whose state is ``tx``'s state over
    ``{group: 1-D buffer}``, built once by ``init``. Leaves smaller than
    ``pack_below`` elements are packed into one buffer per dtype; a larger leaf
    keeps a buffer of its own, in its own shape (packing it would only add
    copies; keeping the shape keeps its sharding). Each
    ``update`` concatenates the gradients of each packed group, runs ``tx`` once
    over all buffers (one pass per buffer) and cuts the updates back into
    parameter-shaped leaves. It fits wherever ``tx`` does: ``optax.chain``,
    ``nnx.Optimizer``, ``TrainState``, ``jit`` with donated state.

    Gradients narrower than their params (bfloat16 gradients of float32 params) are widened to
    the params' dtype before packing, as the unfused optimizer widens them to its state's, and the
    updates come back in the gradients' dtypes. A per-leaf mask (``weight_decay_mask``) splits the
    groups by the mask's value.
    ``tx`` must be built from adamfx stages that are elementwise; anything else
    (a factored second moment, a foreign optax transform) raises ``ValueError`` here.

    Equality holds for moments kept in float dtypes rounded to nearest (the
    default). A storage that rounds stochastically (``mu_dtype="bfloat16"``) or
    quantizes by blocks (``"int8"``) works too, but draws its random bits and
    lays its blocks over the flat buffers instead of each leaf -- and packed small
    leaves, which the unfused int8 keeps in float32, are quantized as one buffer
    once the group reaches 4096 elements -- so the results agree only
    statistically.

    When it helps: many small leaves (fewer buffers per jitted call, one loop
    per group instead of one per leaf), and int8 moments on hundreds of
    mid-size leaves: with ``pack_below=2**16`` the int8 codec runs once per
    step instead of once per matrix, and compiles in about ``optax.adam``'s
    time instead of ~6.4x, at some cost in step time once the buffers outgrow the
    cache (``docs/storage.md``, ``benchmarks/RESULTS.md``). ``pack_below=None``
    packs every leaf (like ``optax.flatten``), which costs more than it saves
    once leaves hold more than a few thousand elements. To remove the per-leaf cost of the
    parameters and gradients as well, keep them flat: :func:`adamfx.flat_params`.

    >>> import adamfx, jax, jax.numpy as jnp, optax
    >>> params = {"b": jnp.zeros(3), "w": jnp.ones((3, 3))}
    >>> tx = adamfx.fused(adamfx.adam(1e-3))
    >>> state = tx.init(params)
    >>> state.inner[0].mu["float32"].shape
    (12,)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = jax.jit(tx.update)(grads, state, params)
    >>> updates["w"][0]  # Adam's first step, -lr sign(g), as without fused
    Array([-0.001, -0.001, -0.001], dtype=float32)
    """
    _stages(tx)
    if pack_below is not None:
        checks.check_range("pack_below", pack_below, 1)
        pack_below = int(pack_below)
    return Fused(tx, pack_below).transform()
