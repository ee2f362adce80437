"""Hyperparameters held in the optimizer state.

Every adamfx stage keeps its numeric hyperparameters as arrays in a
``hyperparams`` dict of its state, and reads them from there in ``update``.
Changing them is therefore a change of *values*, never of the traced program:
a jitted train step does not recompile when the learning rate moves.

A stage state may also have a field named like one of its hyperparameters; it
records the value in effect at the last step (``lr_decay`` stores the learning
rate after its schedule and legacy ``decay`` that way). :func:`hyperparams`
shows it for a learning rate given as a schedule, which has no value to set;
a number shows as it was set.

Every value :func:`set_hyperparams` takes is checked against the one table
of ranges, :data:`adamfx._src.core.checks.HYPERPARAMETERS` (the one construction
and :func:`adamfx.restore_state` use).

Stage states are found wherever they sit in the state: inside adamfx chains,
inside optax wrappers (``MultiSteps``, ``apply_if_finite``, ``masked``,
``partition``), inside other stage states (:func:`adamfx.with_ema`), and inside
``flax.nnx.Optimizer.opt_state`` (whose leaves are ``nnx.Variable``).

**Parameter groups.** A stage state reached through a dict key belongs to the
group of that key: the labels of :func:`adamfx.partition` / ``optax.partition``,
or the keys of any dict of states. ``group=...`` selects the stage states of one
group; without it, reading a name that differs by group is an error.
"""

from __future__ import annotations

import sys
from typing import Any

import jax
import jax.numpy as jnp
from jax.core import Tracer

from adamfx._src.core import checks


def as_arrays(**values: Any) -> dict[str, jax.Array]:
    """Hyperparameters as scalar arrays of the default float dtype (f64 under x64)."""
    return {name: jnp.asarray(value, dtype=float) for name, value in values.items()}


# State fields that record the value in effect at the last step (shown for schedules).
_REPORTED_FIELDS = {"learning_rate"}


COMPLEMENT = "1-"


def complements(**rates: float | None) -> dict[str, float]:
    """Decay rates stored as ``{"1-b": 1 - b}``: the maths needs ``1 - b``, and
    ``1 - float32(0.999)`` is off by 1.3e-5 relative where ``float32(1 - 0.999)`` is exact
    to an ulp. :func:`hyperparams` and :func:`set_hyperparams` speak of ``b``."""
    return {COMPLEMENT + name: 1.0 - rate for name, rate in rates.items() if rate is not None}


def public_name(name: str) -> str:
    return name.removeprefix(COMPLEMENT)


def _is_stage_state(node: Any) -> bool:
    return isinstance(node, tuple) and "hyperparams" in getattr(node, "_fields", ())


def _nnx_variable_type():
    nnx = sys.modules.get("flax.nnx")  # no nnx Variable can exist before flax.nnx is imported
    return None if nnx is None else nnx.Variable


def unwrap(value: Any) -> Any:
    """The array inside an ``nnx.Variable`` (nnx optimizer states wrap every leaf)."""
    variable = _nnx_variable_type()
    return value.get_value() if variable is not None and isinstance(value, variable) else value


def _rewrap(old: Any, new: jax.Array) -> Any:
    """``new`` in the container ``old`` came in, so the state keeps its tree structure."""
    variable = _nnx_variable_type()
    return old.replace(new) if variable is not None and isinstance(old, variable) else new


def _labels(path) -> tuple:
    return tuple(entry.key for entry in path if isinstance(entry, jax.tree_util.DictKey))


def _map_stage_states(fn, tree: Any, labels: tuple = ()) -> Any:
    """Rebuilds ``tree`` with ``fn(group_labels, stage_state)`` applied to every stage state.

    Outer stage states are visited before the stage states nested in them.
    """

    def visit(path, node):
        if not _is_stage_state(node):
            return node
        here = labels + _labels(path)
        node = fn(here, node)
        nested = {f: _map_stage_states(fn, getattr(node, f), here) for f in node._fields if f != "hyperparams"}
        return node._replace(**nested)

    return jax.tree_util.tree_map_with_path(visit, tree, is_leaf=_is_stage_state)


def stage_states(state: Any, group: Any = None) -> list[tuple[tuple, Any]]:
    """``(group labels, stage state)`` for the stage states of ``state`` (of one group if given)."""
    found = []
    _map_stage_states(lambda labels, node: found.append((labels, node)) or node, state)
    if group is None:
        return found
    chosen = [(labels, node) for labels, node in found if group in labels]
    if not chosen:
        raise KeyError(f"no parameter group {group!r} in this optimizer state; its groups are {groups(state)}")
    return chosen


def groups(state: Any) -> list:
    """The parameter-group labels found in ``state`` (sorted), for the ``group=`` argument.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.partition({"head": adamfx.adam(1e-2), "body": adamfx.adam(1e-3)}, {"w": "body", "b": "head"})
    >>> adamfx.groups(tx.init({"w": jnp.ones(2), "b": jnp.ones(2)}))
    ['body', 'head']
    """
    labels = {label for found, _ in stage_states(state) for label in found}
    return sorted(labels, key=repr)


def _own_values(stage_state: Any) -> dict[str, Any]:
    values = {
        public_name(name): 1 - unwrap(value) if name.startswith(COMPLEMENT) else value
        for name, value in stage_state.hyperparams.items()
    }
    for name in _REPORTED_FIELDS & set(stage_state._fields):
        values.setdefault(name, getattr(stage_state, name))  # a schedule: the value last applied
    return values


def _same_value(a: Any, b: Any) -> bool:
    """Whether two concrete hyperparameter values are equal (a name shared by groups reads as one value)."""
    if isinstance(a, Tracer) or isinstance(b, Tracer):
        return False
    return bool(jnp.array_equal(a, b))


def hyperparams(state: Any, group: Any = None) -> dict[str, jax.Array]:
    """The current hyperparameters of an optimizer state, by name.

    Each value is the one in the state: what the optimizer was built with or
    :func:`set_hyperparams` last set. A ``learning_rate`` given as a schedule
    shows the value applied at the last step (after the schedule and the legacy
    ``decay``); before the first step, the schedule's value at step 0.
    ``group`` selects one parameter group (see the module docstring); a name
    whose value differs between groups needs it.

    >>> import adamfx, jax.numpy as jnp
    >>> state = adamfx.adam(1e-3).init({"w": jnp.zeros(3)})
    >>> float(adamfx.hyperparams(state)["b1"])
    0.8999999761581421
    """
    values: dict[str, jax.Array] = {}
    owner: dict[str, tuple] = {}
    per_group = set()
    for labels, stage_state in stage_states(state, group):
        for name, value in _own_values(stage_state).items():
            if name not in values:
                values[name], owner[name] = unwrap(value), labels
            elif group is None and owner[name] != labels and not _same_value(values[name], unwrap(value)):
                per_group.add(name)
    if per_group:
        raise ValueError(
            f"hyperparameter(s) {sorted(per_group)} are kept per parameter group {groups(state)}: "
            "call hyperparams(state, group=...) for one group."
        )
    return values


def _check_names(state: Any, group: Any, names: set[str]) -> None:
    chosen = stage_states(state, group)
    valid = {public_name(name) for _, s in chosen for name in s.hyperparams}
    unknown = sorted(names - valid)
    if not unknown:
        return
    scheduled = sorted({n for _, s in chosen for n in _REPORTED_FIELDS & set(s._fields)} & set(unknown) - valid)
    where = "" if group is None else f" (group {group!r})"
    hint = (
        f"; {scheduled} follow(s) a schedule, which is not a number in the state: rebuild the optimizer to change it"
        if scheduled
        else ""
    )
    raise KeyError(f"unknown hyperparameter(s) {unknown}{where}; this optimizer state has {sorted(valid)}{hint}")


def set_hyperparams(state: Any, group: Any = None, **values: Any) -> Any:
    """Returns ``state`` with the named hyperparameters replaced (in every stage that has them).

    Values keep the dtype and shape of the arrays they replace, so a jitted
    update does not recompile. ``group`` limits the change to one parameter
    group. Unknown names raise ``KeyError`` listing the valid ones; values
    outside the table of ranges (:data:`adamfx._src.core.checks.HYPERPARAMETERS`),
    non-scalars, ``None`` and values the state's dtype cannot hold raise
    ``ValueError``. A learning rate given as a schedule cannot be replaced (it
    is not a number in the state). :func:`hyperparams` shows the new values at once.

    >>> import adamfx, jax.numpy as jnp
    >>> state = adamfx.adam(1e-3).init({"w": jnp.zeros(3)})
    >>> state = adamfx.set_hyperparams(state, learning_rate=1e-4)
    >>> float(adamfx.hyperparams(state)["learning_rate"])
    9.999999747378752e-05
    """
    _check_names(state, group, set(values))
    values = dict(values)
    for name, value in values.items():
        if callable(value):
            raise ValueError(
                f"{name}={value!r} is invalid here: set_hyperparams takes numbers; give a schedule "
                "when building the optimizer."
            )
        checks.check_hyperparameter(name, value, optional=False)
        values[name] = checks.as_python_scalar(value)

    def replace(labels, node):
        if group is not None and group not in labels:
            return node
        new = dict(node.hyperparams)
        for name, value in values.items():
            stored, value = (COMPLEMENT + name, 1 - value) if COMPLEMENT + name in new else (name, value)
            if stored in new:
                old = unwrap(new[stored])
                new[stored] = _rewrap(new[stored], jnp.broadcast_to(jnp.asarray(value, dtype=old.dtype), old.shape))
        return node._replace(hyperparams=new)

    return _map_stage_states(replace, state)
