"""Checking and restoring a checkpointed optimizer state.

An adamfx state is a plain pytree of arrays (NamedTuples, tuples, dicts), so
orbax-checkpoint and ``flax.serialization`` save it as they are. Restored
*without* a target, they return its raw form: orbax gives dicts for the
NamedTuples, lists for the tuples and ``None`` for empty states; flax's
``msgpack_restore`` gives dicts keyed ``"0", "1", ...``. Restored *with* a
target of another optimizer configuration, they fail deep in the tree or, worse,
succeed when the shapes happen to agree.

:func:`check_compatible` compares a checkpoint (the state, its raw form, or
orbax's metadata tree) with what ``tx.init(params)`` builds -- tree structure,
shapes, dtypes and hyperparameter names -- and raises one ``ValueError`` that
lists every difference. :func:`restore_state` checks and then puts the
checkpoint's arrays into the structure of ``tx``'s state. The hyperparameter
*values* come from the checkpoint (the run continues as it was); call
:func:`adamfx.set_hyperparams` afterwards to change them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adamfx._src.core import checks
from adamfx._src.core import hyperparams as hp

_SHOWN = 8  # paths listed per kind of difference


def _key(entry) -> str:
    """One path part; a ``/`` inside a key is escaped, so ``{"a/b": ..}`` and ``{"a": {"b": ..}}`` differ."""
    for attribute in ("key", "name", "idx"):
        if hasattr(entry, attribute):
            return str(getattr(entry, attribute)).replace("%", "%25").replace("/", "%2F")
    return str(entry)


def flat_state(tree: Any) -> dict[str, Any]:
    """``{"1/mu/w": leaf, ...}``: the leaves of a state or of its raw checkpointed form, by path.

    NamedTuple fields, dict keys and sequence indices all become path parts, so
    a state and its orbax/flax raw form give the same paths.
    """
    entries = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key(entry) for entry in path): leaf for path, leaf in entries}


def _describe(leaf: Any) -> str:
    return f"{tuple(np.shape(leaf))} {np.dtype(leaf.dtype).name}"


def _hyperparam_layout(flat: dict[str, Any]) -> dict[str, list[str]]:
    """``{path of a stage state: its hyperparameter names}``."""
    layout: dict[str, list[str]] = {}
    for path in flat:
        prefix, marker, name = f"/{path}".rpartition("/hyperparams/")
        if marker and "/" not in name:
            layout.setdefault(prefix.lstrip("/") or ".", []).append(name)
    return {prefix: sorted(names) for prefix, names in layout.items()}


def _show_layout(layout: dict[str, list[str]]) -> str:
    return " ".join(f"{prefix}{names}".replace("'", "") for prefix, names in sorted(layout.items()))


def _listing(paths: list[str]) -> str:
    shown = ", ".join(paths[:_SHOWN])
    return shown + (f", ... ({len(paths) - _SHOWN} more)" if len(paths) > _SHOWN else "")


def differences(expected: Any, restored: Any) -> list[str]:
    """Human-readable differences between two states (or raw forms / metadata trees); empty if none."""
    want, got = flat_state(expected), flat_state(restored)
    found = []
    want_layout, got_layout = _hyperparam_layout(want), _hyperparam_layout(got)
    want_names = {name for names in want_layout.values() for name in names}
    got_names = {name for names in got_layout.values() for name in names}
    if want_names != got_names:
        found.append(
            f"hyperparameters: only in the checkpoint {sorted(got_names - want_names)}, "
            f"only in this optimizer {sorted(want_names - got_names)}"
        )
    if want_layout != got_layout:
        found.append(
            f"stages (path[hyperparameters]): the checkpoint has {_show_layout(got_layout)}; "
            f"this optimizer has {_show_layout(want_layout)}"
        )
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    if missing:
        found.append(f"{len(missing)} state entries missing from the checkpoint: {_listing(missing)}")
    if extra:
        found.append(f"{len(extra)} checkpoint entries this optimizer does not have: {_listing(extra)}")
    for path in sorted(set(want) & set(got)):
        if _describe(want[path]) != _describe(got[path]):
            found.append(f"{path}: checkpoint {_describe(got[path])}, this optimizer {_describe(want[path])}")
    return found


def check_compatible(tx, params: Any, restored: Any) -> None:
    """Raises ``ValueError`` listing how ``restored`` differs from ``tx.init(params)``'s state.

    ``restored`` is a checkpointed state in any form: the state itself, its raw
    form from orbax or ``flax.serialization.msgpack_restore``, or orbax's
    metadata tree (leaves with ``shape`` and ``dtype``) to check before loading.

    >>> import adamfx, jax.numpy as jnp
    >>> params = {"w": jnp.zeros(3)}
    >>> adamfx.check_compatible(adamfx.adam(mu_dtype=jnp.bfloat16), params, adamfx.adam().init(params))
    Traceback (most recent call last):
    ...
    ValueError: the checkpoint does not match this optimizer's state (tx.init(params)):
      - 0/mu/w: checkpoint (3,) float32, this optimizer (3,) bfloat16
    """
    expected = jax.eval_shape(tx.init, params)
    found = differences(expected, restored)
    if found:
        raise ValueError(
            "the checkpoint does not match this optimizer's state (tx.init(params)):\n"
            + "\n".join(f"  - {line}" for line in found)
        )


def restore_state(tx, params: Any, restored: Any) -> Any:
    """``restored`` (a checkpointed state in any form) as a state of ``tx``, after :func:`check_compatible`.

    The leaves are the checkpoint's arrays, bit for bit, in the tree structure
    ``tx.init(params)`` has; place them with ``jax.device_put(state,
    adamfx.state_shardings(tx, params))`` when the params are sharded.

    >>> import adamfx, jax.numpy as jnp
    >>> from flax import serialization
    >>> params, tx = {"w": jnp.zeros(3)}, adamfx.adam(1e-3)
    >>> raw = serialization.msgpack_restore(serialization.to_bytes(tx.init(params)))
    >>> state = adamfx.restore_state(tx, params, raw)
    >>> float(adamfx.hyperparams(state)["learning_rate"])
    0.0010000000474974513
    """
    check_compatible(tx, params, restored)
    expected = jax.eval_shape(tx.init, params)
    got = flat_state(restored)
    paths = list(flat_state(expected))
    leaves = [got[path] if isinstance(got[path], jax.Array) else jnp.asarray(got[path]) for path in paths]
    state = jax.tree.unflatten(jax.tree.structure(expected), leaves)
    check_hyperparameter_values(state)
    return state


def check_hyperparameter_values(state: Any) -> None:
    """Raises ``ValueError`` if a hyperparameter in ``state`` is outside the table of ranges.

    The same table construction and :func:`adamfx.set_hyperparams` use
    (:data:`adamfx._src.core.checks.HYPERPARAMETERS`): a checkpoint holding ``b1=2``
    or ``learning_rate=-1`` is refused, naming the stage state's path.
    """
    for labels, stage_state in hp.stage_states(state):
        for stored_name, value in stage_state.hyperparams.items():
            number = np.asarray(hp.unwrap(value), dtype=np.float64)
            if number.shape != ():
                raise ValueError(f"the checkpoint's hyperparameter {stored_name} is not a scalar: shape {number.shape}")
            name = hp.public_name(stored_name)
            number = 1.0 - float(number) if stored_name != name else float(number)  # the complement 1 - b
            try:
                checks.check_hyperparameter(name, number, optional=False)
            except ValueError as error:
                where = f" (parameter group {'/'.join(map(str, labels))})" if labels else ""
                raise ValueError(f"the checkpoint holds an invalid hyperparameter{where}: {error}") from None
