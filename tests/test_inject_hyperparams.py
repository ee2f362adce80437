"""``optax.inject_hyperparams`` around every adamfx optimizer behaves as around optax's own (issue 10).

``test_optimizers_can_be_wrapped_in_inject_hyperparams`` is optax's test of the
same name (``optax/_src/alias_test.py``) run on every optimizer of
``tests/registry.py``; the others port ``optax/schedules/_inject_test.py``. The
reference for "injected values take effect" is the live optax optimizer
wrapped the same way.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamfx
from tests import registry


def _problem():
    params = [jnp.negative(jnp.ones((2, 3))), jnp.ones((2, 5, 2))]
    grads = [jnp.ones((2, 3)), jnp.negative(jnp.ones((2, 5, 2)))]
    return params, grads


def _assert_trees_close(actual, expected, rtol):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=rtol * 1e-3)


def _kwargs(entry, everything: bool):
    """optax's configuration (the learning rate only), or every hyperparameter of the registry entry."""
    chosen = entry.hyperparams if everything else {"learning_rate": entry.hyperparams["learning_rate"]}
    return {**chosen, "convention": entry.convention}


def _wrap_cases():
    """optax's configuration for every entry; every hyperparameter injected for the optax convention
    (the other conventions' all-injected runs are slow: 4 compilations each)."""
    for entry in registry.OPTIMIZERS:
        yield pytest.param(entry, False, id=f"{entry.id}-learning_rate")
        marks = () if entry.convention == "optax" else (pytest.mark.slow,)
        yield pytest.param(entry, True, id=f"{entry.id}-all", marks=marks)


@pytest.mark.parametrize(("entry", "everything"), list(_wrap_cases()))
def test_optimizers_can_be_wrapped_in_inject_hyperparams(entry, everything):
    """optax's own test: one jitted step with and without the wrapper give the same updates and state."""
    kwargs = _kwargs(entry, everything)
    opt = entry.factory(**kwargs)
    opt_inject = optax.inject_hyperparams(entry.factory)(**kwargs)
    params, grads = _problem()

    state = jax.jit(opt.init)(params)
    updates, new_state = jax.jit(opt.update)(grads, state, params)
    state_inject = jax.jit(opt_inject.init)(params)
    updates_inject, new_state_inject = jax.jit(opt_inject.update)(grads, state_inject, params)

    _assert_trees_close(updates_inject, updates, rtol=1e-3)
    _assert_trees_close(new_state_inject.inner_state, new_state, rtol=1e-4)


# optax's optimizer of the same name, and the adamfx arguments it spells otherwise.
OPTAX_TWINS = {
    "adam": {},
    "adamw": {},
    "amsgrad": {},
    "sgd": {},
    "rmsprop": {},
    "adadelta": {},
    "adagrad": {},
    "nadam": {},
    "nadamw": {},
    "adamax": {},
    "radam": {},
}


@pytest.mark.parametrize("name", sorted(OPTAX_TWINS))
def test_injected_values_take_effect_as_in_optax(name):
    """Five jitted float64 steps; the injected learning rate changes to 0 at step 3 and to 0.05 at step 4.

    float64, so the comparison is not blurred by optax's float32 ``1 - b2**t``.
    """
    with jax.enable_x64(True):
        _compare_with_optax(name)


def _compare_with_optax(name):
    ours = optax.inject_hyperparams(getattr(adamfx, name))(learning_rate=0.1)
    theirs = optax.inject_hyperparams(getattr(optax, name))(learning_rate=0.1)
    params, grads = jax.tree.map(lambda x: x.astype(jnp.float64), _problem())
    runs = []
    for tx in (ours, theirs):
        state, step, rows = tx.init(params), jax.jit(tx.update), []
        p = params
        for t in range(1, 6):
            if t in (3, 4):
                state.hyperparams["learning_rate"] = jnp.asarray(0.0 if t == 3 else 0.05, jnp.float64)
            g = jax.tree.map(lambda x, p_=p: x * (1.0 + 0.1 * t) + 0.01 * p_[0].sum(), grads)
            updates, state = step(g, state, p)
            p = optax.apply_updates(p, updates)
            rows.append(updates)
        runs.append(rows)
    for t, (mine, peer) in enumerate(zip(*runs, strict=True), start=1):
        _assert_trees_close(mine, peer, rtol=1e-12)
        if t == 3:
            assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(mine))  # lr 0: no step at all


def test_set_hyperparams_on_an_injected_state_takes_effect():
    tx = optax.inject_hyperparams(adamfx.adam)(learning_rate=0.1)
    params, grads = _problem()
    state = adamfx.set_hyperparams(tx.init(params), learning_rate=0.0)
    assert float(adamfx.hyperparams(state)["learning_rate"]) == 0.0
    updates, _ = jax.jit(tx.update)(grads, state, params)
    assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(updates))


def test_updates_follow_an_injected_schedule():
    """optax's ``test_updates``, on adamfx.sgd (whose update is ``-lr g``)."""
    schedule = optax.piecewise_constant_schedule(3.0, {1: 5, 7: 2, 12: 1.5})
    optim = optax.inject_hyperparams(adamfx.sgd)(learning_rate=schedule)
    params = [jnp.zeros([], dtype=jnp.float32)]
    state = jax.jit(optim.init)(params)
    update_fn = jax.jit(optim.update)
    expected = [3.0] * 2 + [15.0] * 6 + [30.0] * 5 + [45.0] * 3
    grads = [jnp.ones([], dtype=jnp.float32)]
    for i in range(15):
        updates, state = update_fn(grads, state, params=params)
        np.testing.assert_allclose(updates[0], -expected[i + 1], rtol=1e-6)  # as optax: inject counts from 0


def test_overriding_an_injected_hyperparameter_every_step():
    """optax's ``test_overriding_hyperparam``, on adamfx.sgd with momentum."""
    optim = optax.inject_hyperparams(adamfx.sgd)(learning_rate=0.1, momentum=0.0)
    params = jnp.zeros((3, 5))
    state = jax.jit(optim.init)(params)
    update_fn = jax.jit(optim.update)
    grads = jnp.ones_like(params)
    for i in range(5):
        state.hyperparams["learning_rate"] = jnp.asarray(float(i))
        updates, state = update_fn(grads, state)
        np.testing.assert_allclose(updates, -i * grads)


@pytest.mark.parametrize("static_args", ["b1", ("b1", "b2")])
def test_numeric_static_args(static_args):
    """optax's ``test_numeric_static_args`` on adamfx.adam."""
    optim = optax.inject_hyperparams(adamfx.adam, static_args=static_args)(b1=0.9, b2=0.95)
    params = [jnp.ones((1, 2)), jnp.ones(2), jnp.ones((1, 1, 1))]
    state = jax.jit(optim.init)(params)
    _, state = jax.jit(optim.update)(params, state)
    names = {static_args} if isinstance(static_args, str) else set(static_args)
    assert not set(state.hyperparams) & names


def test_constant_hyperparams():
    """optax's ``test_constant_hyperparams``: b1 = b2 = 0 make Adam's update ``-lr g / (|g| + eps)``."""
    optim = optax.inject_hyperparams(adamfx.adam)(learning_rate=1.0, b1=0.0, b2=0.0, eps=0.0)
    params = [jnp.zeros([2, 3]) for _ in range(3)]
    state = jax.jit(optim.init)(params)
    update_fn = jax.jit(optim.update)
    grads = jax.tree.map(lambda p: jnp.full_like(p, -2.0), params)
    for _ in range(5):
        updates, state = update_fn(grads, state, params)
        assert float(state.hyperparams["b1"]) == 0.0 and float(state.hyperparams["b2"]) == 0.0
        _assert_trees_close(updates, jax.tree.map(jnp.ones_like, grads), rtol=1e-6)


def test_every_optimizer_signature_is_explicit():
    """inject_hyperparams binds arguments by the signature: no ``**kwargs`` may hide options."""
    import inspect

    for factory in registry.FACTORIES:
        kinds = {p.kind for p in inspect.signature(factory).parameters.values()}
        assert inspect.Parameter.VAR_KEYWORD not in kinds, factory.__name__
