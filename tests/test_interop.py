"""adamfx inside optax chains, optax stages inside adamfx chains, Flax NNX and linen TrainState."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

import adamfx


def trajectory(tx, steps=30):
    """Params after ``steps`` jitted updates, in float64 (where optax is exact too)."""
    with jax.enable_x64(True):
        params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.ones(3)}
        loss = lambda p: jnp.sum((p["w"] - 0.5) ** 2) + jnp.sum(p["b"] ** 4)
        state = tx.init(params)
        for _ in range(steps):
            updates, state = jax.jit(tx.update)(jax.grad(loss)(params), state, params)
            params = optax.apply_updates(params, updates)
        return jax.tree.map(np.asarray, params)


def assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == np.float64
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-12)


def test_adamfx_inside_optax_chain_with_optax_stages_around_it():
    ours = optax.chain(optax.clip_by_global_norm(0.5), adamfx.adam(1e-2), optax.scale(0.5))
    ref = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(1e-2), optax.scale(0.5))
    assert_same(trajectory(ours), trajectory(ref))


def test_optax_stages_inside_adamfx_chain():
    """The paper's stages by hand, with optax clipping before and optax decoupled decay after."""
    ours = adamfx.chain(
        optax.clip_by_global_norm(0.5),
        adamfx.scale_by_moments(0.9, 0.999),
        adamfx.bias_correction(),
        adamfx.normalize(1e-8),
        optax.add_decayed_weights(1e-2),
        adamfx.lr_decay(1e-2),
    )
    ref = optax.chain(optax.clip_by_global_norm(0.5), optax.adamw(1e-2, weight_decay=1e-2))
    assert_same(trajectory(ours), trajectory(ref))


def test_chain_forwards_extra_args_to_transforms_that_take_them():
    seen = {}

    def update(updates, state, params=None, **extra):
        seen.update(extra)
        return updates, state

    probe = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)
    tx = adamfx.chain(optax.scale(1.0), probe, adamfx.adam(1e-3))
    params = {"w": jnp.ones(2)}
    tx.update(params, tx.init(params), params, value=3.0)
    assert seen == {"value": 3.0}


def test_stage_in_the_wrong_place_says_so():
    tx = adamfx.chain(adamfx.normalize(), adamfx.lr_decay(1e-3))
    params = {"w": jnp.ones(2)}
    with pytest.raises(TypeError, match="place it after scale_by_moments"):
        tx.update(params, tx.init(params), params)


class MLP(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(4, 16, rngs=rngs)
        self.l2 = nnx.Linear(16, 1, rngs=rngs)

    def __call__(self, x):
        return self.l2(nnx.tanh(self.l1(x)))


def regression_data():
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    return x, (np.sin(x).sum(1, keepdims=True)).astype(np.float32)


def test_flax_nnx_optimizer_trains_an_mlp():
    x, y = regression_data()
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, adamfx.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    first = float(step(model, optimizer))
    for _ in range(200):
        last = float(step(model, optimizer))
    assert last < 0.1 * first


def test_linen_train_state_trains():
    import flax.linen as nn

    x, y = regression_data()
    model = nn.Sequential([nn.Dense(16), nn.tanh, nn.Dense(1)])
    params = model.init(jax.random.key(0), x)
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=adamfx.adamw(1e-2))

    @jax.jit
    def step(state):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((state.apply_fn(p, x) - y) ** 2))(state.params)
        return state.apply_gradients(grads=grads), loss

    state, first = step(state)
    for _ in range(200):
        state, last = step(state)
    assert float(last) < 0.1 * float(first)
