"""``schedule_free_eval_params``: the averaged iterate x of a schedule-free optimizer, to evaluate with."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from adamfx._src.core import checks
from adamfx._src.execution.flat import Layout
from adamfx._src.execution.fused import PACK_BELOW, FusedState
from adamfx._src.stages.schedule_free import ScheduleFreeState


def _find(state: Any, fused: bool = False) -> tuple[ScheduleFreeState, bool] | None:
    """The first :class:`ScheduleFreeState` inside ``state`` (and whether it lies inside a ``fused`` state)."""
    if isinstance(state, ScheduleFreeState):
        return state, fused
    if isinstance(state, FusedState):
        return _find(state.inner, True)
    children = state.values() if isinstance(state, dict) else state if isinstance(state, (tuple, list)) else ()
    for child in children:
        found = _find(child, fused)
        if found is not None:
            return found
    return None


def _buffer_sizes(layout: Layout) -> dict[str, int]:
    """The number of elements in each group's flat buffer: the sum of its leaves' sizes."""
    sizes = dict.fromkeys(layout.groups, 0)
    for key, shape in zip(layout.keys, layout.shapes, strict=True):
        sizes[key] += math.prod(shape)
    return sizes


def _fused_layout(params: Any, z: Any) -> Layout:
    """The layout ``fused`` packed the params with, recognised from the buffers of ``z``."""
    sizes = {key: buffer.size for key, buffer in z.items()} if isinstance(z, dict) else None
    for pack_below in (PACK_BELOW, None):
        layout = Layout.of(params, (), pack_below)
        if _buffer_sizes(layout) == sizes:
            return layout
    raise ValueError(
        "schedule_free_eval_params: the fused state's buffers do not match a layout of these params "
        "(a weight_decay_mask or a custom pack_below splits them differently); evaluate the unfused optimizer."
    )


def schedule_free_eval_params(state: Any, params: Any) -> Any:
    """The averaged iterate ``x = (y - (1 - b1) z) / b1`` of the schedule-free optimizer whose state is ``state``.

    ``params`` are the training params ``y``; evaluate (test loss, checkpoints for
    inference) at the result, as ``optax.contrib.schedule_free_eval_params`` and
    PyTorch's ``optimizer.eval()`` do. ``state`` may be the optimizer's state or any
    state containing it (``optax.chain``, ``adamfx.fused``, ``nnx.Optimizer.opt_state`` with
    ``nnx.state(model, nnx.Param)`` as ``params``). ``b1`` is the state's
    (``set_hyperparams`` changes it).

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.schedule_free_sgd(1.0, b1=0.5)
    >>> params = {"w": jnp.array([2.0])}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.array([1.0])}, state, params)  # z: 2 - 1 = 1, c = 1: x = z
    >>> y = {"w": params["w"] + updates["w"]}
    >>> y["w"], adamfx.schedule_free_eval_params(state, y)["w"]
    (Array([1.], dtype=float32), Array([1.], dtype=float32))
    """
    found = _find(state)
    if found is None:
        raise ValueError("schedule_free_eval_params needs the state of a schedule-free optimizer; none found in it.")
    sf, fused = found
    (b1,) = jax.tree.leaves(sf.hyperparams["b1"])  # also inside nnx.Optimizer's OptVariables
    if checks.is_concrete(b1) and float(b1) == 0:
        raise ValueError("schedule_free_eval_params: b1=0 keeps y = z, so x = (y - (1 - b1) z) / b1 cannot be rebuilt.")
    z = _fused_layout(params, sf.z).unflatten(sf.z) if fused else sf.z
    y_leaves, treedef = jax.tree.flatten(params)
    z_leaves = jax.tree.leaves(z)  # leaf by leaf: params and z may wrap their arrays differently (nnx Variables)
    if len(z_leaves) != len(y_leaves):
        raise ValueError(
            f"schedule_free_eval_params: params have {len(y_leaves)} leaves, the state's z has {len(z_leaves)}; "
            "pass the params this optimizer was initialized with."
        )

    def leaf(y, z):
        dt = jnp.promote_types(y.dtype, jnp.float32)
        b = jnp.asarray(b1).astype(dt)
        return ((y.astype(dt) - (1 - b) * z.astype(dt)) / b).astype(y.dtype)

    return jax.tree.unflatten(treedef, [leaf(y, z) for y, z in zip(y_leaves, z_leaves, strict=True)])
