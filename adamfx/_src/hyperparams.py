"""Hyperparameters held in the optimizer state.

Every adamfx stage keeps its numeric hyperparameters as arrays in a
``hyperparams`` dict of its state, and reads them from there in ``update``.
Changing them is therefore a change of *values*, never of the traced program:
a jitted train step does not recompile when the learning rate moves.

A stage state may also have a field named like one of its hyperparameters; it
reports the value in effect at the last step (``lr_decay`` stores the learning
rate after its schedule and legacy ``decay`` that way), and
:func:`hyperparams` shows that value.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from adamfx._src import checks


def as_arrays(**values: Any) -> dict[str, jax.Array]:
    """Hyperparameters as scalar arrays of the default float dtype (f64 under x64)."""
    return {name: jnp.asarray(value, dtype=float) for name, value in values.items()}


# State fields that report the value in effect at the last step.
_REPORTED_FIELDS = {"learning_rate"}


COMPLEMENT = "1-"


def complements(**rates: float | None) -> dict[str, float]:
    """Decay rates stored as ``{"1-b": 1 - b}``: the maths needs ``1 - b``, and
    ``1 - float32(0.999)`` is off by 1.3e-5 relative where ``float32(1 - 0.999)`` is exact
    to an ulp. :func:`hyperparams` and :func:`set_hyperparams` speak of ``b``."""
    return {COMPLEMENT + name: 1.0 - rate for name, rate in rates.items() if rate is not None}


def _public(name: str) -> str:
    return name.removeprefix(COMPLEMENT)


def _is_stage_state(node: Any) -> bool:
    return isinstance(node, tuple) and "hyperparams" in getattr(node, "_fields", ())


def _stage_states(state: Any) -> list[Any]:
    leaves = jax.tree.leaves(state, is_leaf=_is_stage_state)
    return [leaf for leaf in leaves if _is_stage_state(leaf)]


def hyperparams(state: Any) -> dict[str, jax.Array]:
    """The current hyperparameters of an optimizer state, by name.

    For ``learning_rate`` this is the value applied at the last step (after the
    schedule and the legacy ``decay``); before the first step, the value the
    first step will apply.

    >>> import adamfx, jax.numpy as jnp
    >>> state = adamfx.adam(1e-3).init({"w": jnp.zeros(3)})
    >>> float(adamfx.hyperparams(state)["b1"])
    0.8999999761581421
    """
    values: dict[str, jax.Array] = {}
    for stage_state in _stage_states(state):
        for name, value in stage_state.hyperparams.items():
            values.setdefault(_public(name), 1 - value if name.startswith(COMPLEMENT) else value)
        for name in _REPORTED_FIELDS & set(stage_state._fields):
            values[name] = getattr(stage_state, name)
    return values


def settable_hyperparams(state: Any) -> set[str]:
    """Names that :func:`set_hyperparams` accepts for this state."""
    return {_public(name) for s in _stage_states(state) for name in s.hyperparams}


_RANGES = {
    "b1": (0.0, 1.0),
    "b2": (0.0, 1.0),
}


def set_hyperparams(state: Any, **values: Any) -> Any:
    """Returns ``state`` with the named hyperparameters replaced (in every stage that has them).

    Values keep the dtype and shape of the arrays they replace, so a jitted
    update does not recompile. Unknown names raise ``KeyError`` listing the valid
    ones; out-of-range values raise ``ValueError``. A learning rate given as a
    schedule cannot be replaced (it is not a number in the state).

    >>> import adamfx, jax.numpy as jnp
    >>> state = adamfx.adam(1e-3).init({"w": jnp.zeros(3)})
    >>> state = adamfx.set_hyperparams(state, learning_rate=1e-4)
    """
    valid = settable_hyperparams(state)
    unknown = sorted(set(values) - valid)
    if unknown:
        raise KeyError(f"unknown hyperparameter(s) {unknown}; this optimizer state has {sorted(valid)}")
    for name, value in values.items():
        low, high = _RANGES.get(name, (0.0, float("inf")))
        checks.check_range(name, value, low, high)

    def replace(node):
        if not _is_stage_state(node):
            return node
        new = dict(node.hyperparams)
        for name, value in values.items():
            stored, value = (COMPLEMENT + name, 1 - value) if COMPLEMENT + name in new else (name, value)
            if stored in new:
                old = new[stored]
                new[stored] = jnp.broadcast_to(jnp.asarray(value, dtype=old.dtype), old.shape)
        return node._replace(hyperparams=new)

    return jax.tree.map(replace, state, is_leaf=_is_stage_state)
