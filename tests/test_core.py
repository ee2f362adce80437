"""Core behaviour of the stages and of adam/adamw/amsgrad (parity with peers lives in test_parity_adam.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamfx

OPTIMIZERS = {
    "adam": lambda conv: adamfx.adam(0.05, convention=conv),
    "adamw": lambda conv: adamfx.adamw(0.05, weight_decay=1e-3, convention=conv),
    "amsgrad": lambda conv: adamfx.amsgrad(0.05, convention=conv),
    "adam+decay": lambda conv: adamfx.adam(0.05, decay=1e-3, convention=conv),
}
CONVENTIONS = ["optax", "torch", "keras"]


def run(tx, loss, params, steps):
    def step(carry, _):
        params, state = carry
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, None, length=steps))((params, tx.init(params)))
    return params


def parabola(p):
    return jnp.sum((p["x"] - 3.0) ** 2) + jnp.sum((p["y"] + 1.0) ** 2)


def rosenbrock(p):
    x, y = p["xy"][0], p["xy"][1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


@pytest.mark.parametrize("conv", CONVENTIONS)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_converges_on_parabola(name, conv):
    params = {"x": jnp.zeros(3), "y": jnp.zeros((2, 2))}
    final = run(OPTIMIZERS[name](conv), parabola, params, 600)
    assert float(parabola(final)) < 1e-3


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_converges_on_rosenbrock(conv):
    params = {"xy": jnp.array([-1.2, 1.0])}
    final = run(adamfx.adam(0.02, convention=conv), rosenbrock, params, 4000)
    np.testing.assert_allclose(np.asarray(final["xy"]), [1.0, 1.0], atol=2e-2)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32, jnp.complex64])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_preserves_dtype(name, dtype):
    params = {"w": jnp.ones((4, 3), dtype), "b": jnp.zeros(3, dtype)}
    tx = OPTIMIZERS[name]("torch")
    state = tx.init(params)
    grads = jax.tree.map(lambda p: (p + 1) * 0.5, params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    for leaf in jax.tree.leaves(updates):
        assert leaf.dtype == dtype
        assert bool(jnp.all(jnp.isfinite(leaf)))
    assert jax.tree.map(lambda x: x.dtype, jax.tree.leaves(state)) == jax.tree.map(
        lambda x: x.dtype, jax.tree.leaves(tx.init(params))
    )


def test_preserves_float64():
    with jax.enable_x64(True):
        params = {"w": jnp.ones(3, jnp.float64)}
        tx = adamfx.adam(1e-3)
        updates, _ = jax.jit(tx.update)(params, tx.init(params), params)
        assert updates["w"].dtype == jnp.float64


def test_complex_moments_use_abs_squared():
    """Complex params: nu is the EMA of |g|^2 (real) and mu is complex, as in optax.

    (torch.optim treats a complex tensor as pairs of reals instead: a different rule.)
    """
    g = np.array([1 + 2j, -0.5 + 0.25j, 3j])
    with jax.enable_x64(True):
        params = {"z": jnp.array([0.5 - 1j, 2 + 0j, -1 + 1j], jnp.complex128)}
        ours, ref = adamfx.adam(0.1), optax.adam(0.1)
        state, ref_state, ref_params = ours.init(params), ref.init(params), params
        for step in range(20):
            grads = {"z": jnp.asarray(g * (step + 1))}
            updates, state = jax.jit(ours.update)(grads, state, params)
            params = optax.apply_updates(params, updates)
            ref_updates, ref_state = ref.update(grads, ref_state, ref_params)
            ref_params = optax.apply_updates(ref_params, ref_updates)
        assert state[0].nu["z"].dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(params["z"]), np.asarray(ref_params["z"]), rtol=1e-12)


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
