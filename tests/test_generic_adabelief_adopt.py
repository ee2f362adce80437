"""adabelief and adopt through the library's generic guarantees: checkpoints, sharding, no recompiles, dtypes.

(Bad input and ``inject_hyperparams`` come from ``tests/registry.py``; parity with the peers is in
``test_parity_adabelief.py`` and ``test_parity_adopt.py``.) References are the same optimizer run
uninterrupted, on one device, or built afresh -- bit for bit where the arithmetic is the same.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import adamfx
from tests.compile_count import static_tx_step

BUILDS = {
    "adabelief-optax": lambda: adamfx.adabelief(1e-2, amsgrad=True, nesterov=True, weight_decay=1e-2),
    "adabelief-torch": lambda: adamfx.adabelief(1e-2, weight_decay=1e-2, convention="torch"),
    "adopt-optax": lambda: adamfx.adopt(1e-2, nesterov=True, weight_decay=1e-2),
    "adopt-torch": lambda: adamfx.adopt(1e-2, b2=0.99, cautious=True, weight_decay=1e-2, convention="torch"),
}
SHAPES = {"w": (16, 8), "b": (8,), "s": ()}
FAST = ("adabelief-torch", "adopt-optax")  # the others run in CI (slow)
NAMES = [pytest.param(name, marks=() if name in FAST else pytest.mark.slow) for name in BUILDS]


def tree(seed, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(rng.standard_normal(shape), dtype) for k, shape in SHAPES.items()}


def run(tx, params, state, seeds):
    step = jax.jit(tx.update)
    for seed in seeds:
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), tree(seed), params)
        updates, state = step(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def assert_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_resumes_bit_for_bit(name):
    tx, params = BUILDS[name](), tree(0)
    expected = run(tx, params, tx.init(params), range(1, 9))
    middle_params, middle_state = run(tx, params, tx.init(params), range(1, 5))
    raw = serialization.msgpack_restore(serialization.to_bytes(middle_state))
    restored = adamfx.restore_state(BUILDS[name](), params, raw)
    assert_equal(run(tx, middle_params, restored, range(5, 9)), expected)


@pytest.mark.parametrize("name", NAMES)
def test_no_recompile_on_rebuild_or_new_hyperparameters(name):
    traces = []
    step = static_tx_step(traces)
    params = tree(0)
    state = BUILDS[name]().init(params)
    for seed in range(1, 4):
        tx = BUILDS[name]()  # a fresh but equal optimizer every step
        params, state = step(tx, params, state, tree(seed))
        state = adamfx.set_hyperparams(state, learning_rate=1e-2 / seed, b1=0.8, eps=1e-7)
    assert len(traces) == 1


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
@pytest.mark.parametrize("name", NAMES)
def test_sharded_run_equals_the_single_device_run(name):
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    specs = {"w": P("data", "model"), "b": P("model"), "s": P()}
    place = lambda t: jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), t, specs)
    tx, params = BUILDS[name](), tree(0)
    state = adamfx.init_sharded(tx, place(params))
    step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(g, s, p)))
    sharded = (place(params), state)
    for seed in range(1, 5):
        sharded = step(*sharded, place(tree(seed)))
    assert sharded[0]["w"].sharding.spec == P("data", "model")
    reference = run(tx, params, tx.init(params), range(1, 5))
    for x, y in zip(jax.tree.leaves(sharded), jax.tree.leaves(reference), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, pytest.param(jnp.float16, marks=pytest.mark.slow)])
def test_low_precision_params(name, dtype):
    """bf16/f16 params: the moments default to bf16/f32 (f16 cannot hold g^2), the updates keep the dtype."""
    tx, params = BUILDS[name](), tree(0, dtype)
    state = tx.init(params)
    new_params, new_state = run(tx, params, state, range(1, 5))
    assert all(p.dtype == dtype and bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(new_params))
    moment_dtypes = {x.dtype for x in jax.tree.leaves(new_state) if x.ndim}
    assert moment_dtypes == {jnp.dtype(jnp.bfloat16 if dtype == jnp.bfloat16 else jnp.float32)}
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
