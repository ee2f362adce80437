"""Core behaviour of the stages and chains: extra update arguments, no retracing, ``eval_shape``, the step
counter, learning-rate schedules with the legacy decay, weight-decay masks, equality, the docstrings.

(Generic behaviour of every optimizer: test_generic.py, drawn from tests/registry.py.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adamfx


def test_update_accepts_extra_keyword_args():
    params = {"w": jnp.ones(3)}
    tx = adamfx.adam(1e-3)
    updates, _ = tx.update(params, tx.init(params), params, value=jnp.array(1.0), unrelated="x")
    assert updates["w"].shape == (3,)


def test_no_recompilation_on_repeated_calls():
    traces = []
    tx = adamfx.adam(1e-3, weight_decay=1e-2, amsgrad=True)

    @jax.jit
    def step(params, state):
        traces.append(1)
        updates, state = tx.update(params, state, params)
        return optax.apply_updates(params, updates), state

    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    for _ in range(5):
        params, state = step(params, state)
    assert len(traces) == 1


def test_eval_shape_of_init():
    params = {"w": jax.ShapeDtypeStruct((1000, 1000), jnp.float32), "b": jax.ShapeDtypeStruct((7,), jnp.bfloat16)}
    state = jax.eval_shape(adamfx.adam(1e-3, amsgrad=True).init, params)
    moments = state[0]
    assert moments.mu["w"].shape == (1000, 1000)
    assert moments.nu["b"].dtype == jnp.bfloat16


def test_count_saturates_instead_of_overflowing():
    params = {"w": jnp.ones(2)}
    tx = adamfx.adam(1e-3)
    state = tx.init(params)
    top = jnp.iinfo(jnp.int32).max
    state = (state[0]._replace(count=jnp.asarray(top, jnp.int32)), *state[1:])
    _, state = tx.update(params, state, params)
    assert int(state[0].count) == top


def test_learning_rate_schedule_and_legacy_decay_compose():
    """lr_t = schedule(t) / (1 + decay t), t from 0: the first step is undecayed."""
    schedule = optax.exponential_decay(0.1, transition_steps=1, decay_rate=0.5)
    tx = adamfx.lr_decay(schedule, decay=0.25)
    params = {"w": jnp.ones(())}
    state = tx.init(params)
    for t in range(4):
        updates, state = tx.update({"w": jnp.ones(())}, state)
        expected = 0.1 * 0.5**t / (1 + 0.25 * t)
        np.testing.assert_allclose(float(updates["w"]), -expected, rtol=1e-6)
        np.testing.assert_allclose(float(adamfx.hyperparams(state)["learning_rate"]), expected, rtol=1e-6)


def test_weight_decay_mask_excludes_leaves():
    params = {"w": jnp.ones(2), "b": jnp.ones(2)}
    zero = jax.tree.map(jnp.zeros_like, params)
    tx = adamfx.add_decayed_weights(0.5, mask={"w": True, "b": False})
    updates, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_array_equal(np.asarray(updates["w"]), [0.5, 0.5])
    np.testing.assert_array_equal(np.asarray(updates["b"]), [0.0, 0.0])
    callable_mask = adamfx.add_decayed_weights(0.5, mask=lambda p: {k: k == "w" for k in p})
    updates, _ = callable_mask.update(zero, callable_mask.init(params), params)
    np.testing.assert_array_equal(np.asarray(updates["b"]), [0.0, 0.0])


def test_equal_arguments_give_equal_optimizers():
    assert adamfx.adam(1e-3, weight_decay_mask={"w": True}) == adamfx.adam(1e-3, weight_decay_mask={"w": True})
    assert hash(adamfx.adamw(1e-3)) == hash(adamfx.adamw(1e-3))
    assert adamfx.adam(1e-3) != adamfx.adam(2e-3)
    assert adamfx.adam(1e-3, convention="torch") != adamfx.adam(1e-3, convention="keras")


def test_help_shows_rule_reference_and_conventions():
    doc = adamfx.adam.__doc__
    for needle in ["m_t  = b1 m_{t-1} + (1 - b1) g_t", "Kingma & Ba, 2015", '"keras"', '"torch"', "eps/sqrt(bc2)"]:
        assert needle in doc
