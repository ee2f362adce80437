"""Vectorized hyperparameter sweeps: K optimizer settings as one batched state.

Every adamfx stage reads its hyperparameters from its state (see
:mod:`adamfx._src.core.hyperparams`), so K settings of one optimizer are K states of
the *same* program. :func:`sweep` stacks them along a new leading axis, and
``jax.vmap(tx.update)`` then runs K optimizers -- and, with a vmapped loss, K
models -- in one jitted, once-compiled step::

    states = adamfx.sweep(tx.init(params), learning_rate=[1e-3, 3e-3, 1e-2])
    params = adamfx.sweep_params(params, 3)
    updates, states = jax.vmap(tx.update)(grads, states, params)

Member k of the sweep follows exactly the run of the optimizer built with
``values[name][k]`` at construction. The values go through
:func:`adamfx.set_hyperparams` one member at a time, so names, groups, stored
complements (``1 - b``) and range checks are those of ``set_hyperparams``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adamfx._src.core.hyperparams import set_hyperparams


def _columns(values: dict[str, Any]) -> tuple[int, dict[str, list[float]]]:
    """``(K, {name: K Python numbers})``; raises for anything that is not K values per name."""
    if not values:
        raise ValueError("sweep needs at least one hyperparameter, e.g. sweep(state, learning_rate=[1e-3, 1e-2]).")
    columns = {}
    for name, sequence in values.items():
        if callable(sequence):
            raise ValueError(
                f"sweep: {name}={sequence!r} is invalid: a sweep takes numbers, not a schedule "
                "(build one optimizer per schedule instead)."
            )
        try:
            array = np.asarray(sequence, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"sweep: {name}={sequence!r} is invalid: it must be a 1-D sequence of numbers.") from None
        if array.ndim != 1 or array.size == 0:
            raise ValueError(
                f"sweep: {name} must be a non-empty 1-D sequence (one value per member), got shape {array.shape}; "
                "for a single value use adamfx.set_hyperparams."
            )
        columns[name] = array.tolist()  # Python floats: 1 - b is then formed as at construction
    lengths = {name: len(column) for name, column in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"sweep: the sequences are zipped member by member and must have one length, got {lengths}; "
            "for a grid, build the columns with itertools.product."
        )
    return next(iter(lengths.values())), columns


def _members(state: Any, size: int) -> list[Any]:
    """Member k of an already-batched state: every leaf's slice ``[k]``."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        if np.ndim(leaf) == 0 or np.shape(leaf)[0] != size:
            raise ValueError(
                f"sweep(batched=True): every leaf of the state needs a leading axis of size {size} "
                f"(the length of the values); leaf {jax.tree_util.keystr(path)} has shape {np.shape(leaf)}."
            )
    return [jax.tree.map(lambda leaf, k=k: leaf[k], state) for k in range(size)]


def sweep(state: Any, group: Any = None, *, batched: bool = False, **values: Any) -> Any:
    """The optimizer state of K settings, stacked along a new leading axis.

    Member k carries ``values[name][k]`` for every given name (the sequences
    are zipped, so all must have the same length K) and is otherwise ``state``.
    Run the K members with ``jax.vmap(tx.update)(grads, states, params)``,
    where ``grads`` and ``params`` carry the same leading axis (see
    :func:`sweep_params`); member k then follows, step for step, the
    optimizer built with those values at construction. One jitted step serves
    every member: it compiles once.

    ``state`` is the state of one member (``tx.init(params)``), copied K
    times. With ``batched=True`` it already has the leading axis K -- e.g.
    ``jax.vmap(tx.init)(params)`` over K different initial params, which
    matters for states that copy the params (:func:`adamfx.with_ema`) -- and
    member k keeps its own state.

    ``group`` limits the values to one parameter group, as in
    :func:`adamfx.set_hyperparams`, which checks the names (``KeyError``
    listing the valid ones; a learning rate given as a schedule is not a
    number in the state and cannot be swept) and the ranges (``ValueError``,
    naming the member).

    A grid is the product of the axes, zipped into columns::

        import itertools
        grid = list(itertools.product([1e-3, 1e-2, 1e-1], [0.9, 0.99]))  # 6 members
        lrs, b1s = zip(*grid)
        states = adamfx.sweep(tx.init(params), learning_rate=lrs, b1=b1s)

    >>> import adamfx, jax, jax.numpy as jnp
    >>> tx = adamfx.adam()
    >>> params = {"w": jnp.ones(3)}
    >>> states = adamfx.sweep(tx.init(params), learning_rate=[0.1, 0.01])
    >>> batch = adamfx.sweep_params(params, 2)
    >>> updates, states = jax.vmap(tx.update)(batch, states, batch)
    >>> [round(float(u), 6) for u in updates["w"][:, 0]]
    [-0.1, -0.01]
    """
    size, columns = _columns(values)
    members = _members(state, size) if batched else [state] * size
    swept = []
    for k, member in enumerate(members):
        setting = {name: column[k] for name, column in columns.items()}
        try:
            swept.append(set_hyperparams(member, group=group, **setting))
        except ValueError as error:
            raise ValueError(f"sweep: member {k} of {size} ({setting}): {error}") from None
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *swept)


def sweep_params(params: Any, size: int | None = None, *, keys: Any = None) -> Any:
    """Params with a leading axis of K members, for :func:`sweep`.

    ``sweep_params(params, K)`` stacks K copies of ``params``;
    ``sweep_params(init, keys=keys)`` is ``jax.vmap(init)(keys)``: K
    initialisations ``init(key)`` from K PRNG keys (e.g. ``jax.random.split(key, K)``),
    so the members start from different random weights.

    >>> import adamfx, jax, jax.numpy as jnp
    >>> adamfx.sweep_params({"w": jnp.arange(3.0)}, 2)["w"]  # one copy per run
    Array([[0., 1., 2.],
           [0., 1., 2.]], dtype=float32)
    >>> init, keys = lambda key: {"w": jax.random.normal(key, (3,))}, jax.random.split(jax.random.key(0), 5)
    >>> batch = adamfx.sweep_params(init, keys=keys)
    >>> batch["w"].shape, bool((batch["w"][4] == init(keys[4])["w"]).all())  # run i starts from init(keys[i])
    ((5, 3), True)
    """
    if callable(params):
        if keys is None or size is not None:
            raise ValueError("sweep_params(init, keys=...): an init function takes one PRNG key per member, not size.")
        return _vmapped(params, keys)
    if keys is not None:
        raise ValueError("sweep_params: keys=... needs an init function key -> params as first argument.")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"sweep_params: size={size!r} is invalid: it must be the number of members, an int >= 1.")
    return jax.tree.map(lambda leaf: jnp.stack([jnp.asarray(leaf)] * int(size)), params)


def _vmapped(init: Callable, keys: Any) -> Any:
    if np.ndim(keys) == 0 or (not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key) and np.ndim(keys) != 2):
        raise ValueError(
            f"sweep_params: keys must hold one PRNG key per member (jax.random.split(key, K)), got shape "
            f"{np.shape(keys)}."
        )
    return jax.vmap(init)(keys)
