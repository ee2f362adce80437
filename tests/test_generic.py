"""Every registered optimizer through the library's generic guarantees (``tests/registry.py``).

Checkpoints, sharding, recompilation, low-precision params, value equality and
``set_hyperparams``, for every optimizer x convention x variant of ``registry.ALL``:
one plain entry per optimizer runs by default (``registry.runs_by_default``), the rest
in CI (slow). References are the same optimizer run uninterrupted, on one device, or
built afresh with the values -- bit for bit where the arithmetic is the same. (Bad
input: test_bad_input.py; ``inject_hyperparams``: test_inject_hyperparams.py;
``fused``: test_fused.py; ``sweep``: test_sweep.py; parity with the peers:
test_parity_<family>.py.)
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
from tests import peers, registry
from tests.compile_count import static_tx_step

SHAPES = {"w": (16, 8), "b": (8,), "s": ()}
CASES = registry.cases()


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


def other_values(entry: registry.Entry, state) -> dict:
    """A second valid value (``registry.OTHER_VALUES``) of every hyperparameter the state holds and the factory takes.

    adagrad takes one of its two inverse-time decays: its ``decay`` stays; so does Nesterov's dampening (0).
    prodigy's ``d0`` only seeds ``d`` at init (test_set_hyperparams_of_prodigy_d0_does_not_reach_d).
    """
    names = set(adamfx.hyperparams(state)) & set(entry.hyperparams) - {"d0"}
    if "lr_decay" in names:
        names.discard("decay")
    if entry.options.get("nesterov"):
        names.discard("dampening")  # Nesterov needs dampening 0
    return {name: registry.OTHER_VALUES[name] for name in sorted(names)}


@pytest.mark.parametrize("entry", CASES)
def test_checkpoint_resumes_bit_for_bit(entry):
    tx, params = entry.build(), tree(0)
    expected = run(tx, params, tx.init(params), range(1, 9))
    middle_params, middle_state = run(tx, params, tx.init(params), range(1, 5))
    raw = serialization.msgpack_restore(serialization.to_bytes(middle_state))
    restored = adamfx.restore_state(entry.build(), params, raw)
    assert_equal(run(tx, middle_params, restored, range(5, 9)), expected)


@pytest.mark.parametrize("entry", CASES)
def test_no_recompile_on_rebuild_or_new_hyperparameters(entry):
    traces = []
    step = static_tx_step(traces)
    params = tree(0)
    state = entry.build().init(params)
    for seed in range(1, 4):
        tx = entry.build()  # a fresh but equal optimizer every step
        params, state = step(tx, params, state, tree(seed))
        state = adamfx.set_hyperparams(state, **other_values(entry, state))
    assert len(traces) == 1


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
@pytest.mark.parametrize("entry", CASES)
def test_sharded_run_equals_the_single_device_run(entry):
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    specs = {"w": P("data", "model"), "b": P("model"), "s": P()}
    place = lambda t: jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), t, specs)
    tx, params = entry.build(), tree(0)
    state = adamfx.init_sharded(tx, place(params))
    step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(g, s, p)))
    sharded = (place(params), state)
    for seed in range(1, 5):
        sharded = step(*sharded, place(tree(seed)))
    assert sharded[0]["w"].sharding.spec == P("data", "model")
    reference = run(tx, params, tx.init(params), range(1, 5))
    for x, y in zip(jax.tree.leaves(sharded), jax.tree.leaves(reference), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("entry", CASES)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, pytest.param(jnp.float16, marks=pytest.mark.slow)])
def test_low_precision_params(entry, dtype):
    """bf16/f16 params: the moments default to bf16/f32 (f16 cannot hold g^2), the updates keep the dtype."""
    tx, params = entry.build(), tree(0, dtype)
    state = tx.init(params)
    new_params, new_state = run(tx, params, state, range(1, 5))
    assert all(p.dtype == dtype and bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(new_params))
    moment_dtypes = {x.dtype for x in jax.tree.leaves(new_state) if x.ndim}
    expected = {jnp.dtype(jnp.bfloat16 if dtype == jnp.bfloat16 else jnp.float32)}
    if entry.factory in registry.FLOAT32_STATE:  # and some state in float32 (the registry says which)
        expected |= {jnp.dtype(jnp.float32)}
    if entry.factory in registry.PARAMS_IN_STATE:  # and a copy of the params
        expected |= {jnp.dtype(dtype)}
    assert (
        moment_dtypes <= expected and jnp.dtype(jnp.bfloat16 if dtype == jnp.bfloat16 else jnp.float32) in moment_dtypes
    )
    assert jax.tree.structure(new_state) == jax.tree.structure(state)


@pytest.mark.parametrize("entry", CASES)
def test_equal_arguments_give_equal_optimizers(entry):
    """Optimizers compare and hash by value (a static jit argument that does not retrace when rebuilt)."""
    assert entry.build() == entry.build()
    assert hash(entry.build()) == hash(entry.build())
    assert entry.build() != entry.build(learning_rate=registry.OTHER_VALUES["learning_rate"])


@pytest.mark.parametrize("entry", CASES)
def test_set_hyperparams_before_the_first_step_equals_building_with_the_values(entry):
    """Every hyperparameter changed in the state at once gives the optimizer built with those values (float64)."""
    problem = peers.make_problem()
    with jax.enable_x64(True):
        changed = other_values(entry, entry.build().init(problem.params_in(np.float64)))
        reference = peers.run_transform(entry.build_as_the_state_holds(**changed), problem, 30)
        tx = entry.build()
        retuned = optax.GradientTransformation(lambda p: adamfx.set_hyperparams(tx.init(p), **changed), tx.update)
        actual = peers.run_transform(retuned, problem, 30)
    assert peers.max_abs_diff(actual, peers.run_transform(tx, problem, 30)) > 1e-6  # the values changed the run
    np.testing.assert_allclose(actual, reference, rtol=0, atol=1e-14)


def test_set_hyperparams_of_prodigy_d0_reaches_d():
    """d_0 = d0 is read from the state at the first step, so a d0 set before it counts (it once seeded d at init)."""
    problem = peers.make_problem()
    with jax.enable_x64(True):
        tx = adamfx.prodigy(d0=1e-6)
        retuned = optax.GradientTransformation(lambda p: adamfx.set_hyperparams(tx.init(p), d0=1e-4), tx.update)
        actual = peers.run_transform(retuned, problem, 30)
        reference = peers.run_transform(adamfx.prodigy(d0=1e-4), problem, 30)
    np.testing.assert_allclose(actual, reference, rtol=0, atol=1e-14)
