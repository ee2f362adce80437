"""Schedule-free beyond parity: hyperparameters in the state, storages of v and z, fused, the eval iterate, errors.

References: the NumPy transcription of the paper's algorithm (``tests/test_parity_schedule_free.py``) and
the unfused optimizer (for ``fused``, which must do the same arithmetic element for element).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamfx
from tests import peers
from tests.test_hyperparams import run
from tests.test_parity_schedule_free import LR, PROBLEM, W, numpy_schedule_free, run_ours

HYPERPARAMETERS = {"learning_rate": 2 * LR, "warmup_steps": 4.0, "b1": 0.8, "b2": 0.99, "eps": 1e-6}
HYPERPARAMETERS |= {"weight_decay": 0.05, "weight_lr_power": 1.5}


def test_set_hyperparams_takes_effect_like_the_papers_algorithm_with_those_values():
    tx = adamfx.schedule_free_adamw(LR, W, convention="torch")
    with jax.enable_x64(True):
        traj, _, traces, compiled = run(tx, PROBLEM, 30, {1: HYPERPARAMETERS})
    expected, _ = numpy_schedule_free(2 * LR, 4.0, 0.8, 0.99, 1e-6, 0.05, 1.5, steps=30)
    assert (traces, compiled) == (1, 1)
    assert peers.max_abs_diff(traj, expected) <= 1e-12


@pytest.mark.parametrize("convention", ["optax", pytest.param("keras", marks=pytest.mark.slow)])
def test_every_hyperparameter_changes_without_recompiling(convention):
    tx = adamfx.schedule_free_adamw(LR, W, weight_decay=0.01, weight_lr_power=1.0, convention=convention)
    with jax.enable_x64(True):
        changed, _, traces, compiled = run(tx, PROBLEM, 8, {3: HYPERPARAMETERS, 6: {"b1": 0.5}})
        unchanged, *_ = run(tx, PROBLEM, 8)
    assert (traces, compiled) == (1, 1)
    assert peers.max_abs_diff(changed[2:], unchanged[2:]) > 1e-6


def test_equal_arguments_give_equal_optimizers():
    make = lambda: adamfx.schedule_free_adamw(1e-3, 10, weight_decay=0.1, convention="keras")
    assert make() == make() and hash(make()) == hash(make())
    assert adamfx.schedule_free_sgd(0.5, convention="torch") != adamfx.schedule_free_sgd(0.5, convention="optax")


@pytest.mark.parametrize("convention", ["torch", pytest.param("keras", marks=pytest.mark.slow)])
def test_fused_equals_unfused_and_its_eval_params_too(convention):
    tx = adamfx.schedule_free_adamw(LR, W, weight_decay=0.05, convention=convention)
    y, x = run_ours(tx, steps=30)
    fused_y, fused_x = run_ours(adamfx.fused(tx), steps=30)
    assert peers.max_abs_diff(fused_y, y) <= 1e-14
    assert peers.max_abs_diff(fused_x, x) <= 1e-14


def test_fused_state_keeps_z_and_v_in_one_flat_buffer():
    params = {"b": jnp.zeros(3), "w": jnp.ones((3, 3))}
    state = adamfx.fused(adamfx.schedule_free_adamw(convention="torch")).init(params)
    sf = next(s for s in state.inner if isinstance(s, adamfx.ScheduleFreeState))
    assert sf.z["float32"].shape == (12,)
    np.testing.assert_array_equal(sf.z["float32"], np.r_[np.zeros(3), np.ones(9)])  # z_1 = y_1


# Leaves large enough for int8's blocks (smaller leaves it keeps in float32) and for factoring.
LARGE = peers.make_problem(shapes={"w": (64, 80), "b": (80,), "s": ()})


@pytest.mark.parametrize(
    ("arguments", "stored"),
    [
        ({"nu_dtype": jnp.bfloat16}, ("nu", jnp.bfloat16)),
        pytest.param({"nu_dtype": "int8"}, ("nu", None), marks=pytest.mark.slow),
        pytest.param({"nu_dtype": "factored"}, ("nu", None), marks=pytest.mark.slow),
        pytest.param({"z_dtype": jnp.bfloat16}, ("z", jnp.bfloat16), marks=pytest.mark.slow),
    ],
)
def test_storages_of_v_and_z_train_as_well_as_float32(arguments, stored):
    """Low-precision v (bf16, int8, factored) and bf16 z: after 100 steps the eval iterate x is as near the
    quadratic's minimum as with float32 state (within 10%), on a path that really differs."""
    kwargs = {"learning_rate": 0.05, "warmup_steps": 16, "weight_decay": 0.01, "convention": "torch"}
    target = peers.flatten(LARGE.target)
    reference_y, reference_x = run_ours(adamfx.schedule_free_adamw(**kwargs), np.float32, steps=100, problem=LARGE)
    tx = adamfx.schedule_free_adamw(**kwargs, **arguments)
    y, x = run_ours(tx, np.float32, steps=100, problem=LARGE)
    assert peers.max_abs_diff(y, reference_y) > 0  # the storage is in use
    assert np.mean((x[-1] - target) ** 2) <= 1.1 * np.mean((reference_x[-1] - target) ** 2)
    assert np.mean((reference_x[-1] - target) ** 2) < 0.1 * np.mean((peers.flatten(LARGE.init_params) - target) ** 2)
    field, dtype = stored
    state = tx.init({"w": jnp.ones((3, 4), jnp.float32)})
    kept = [
        s for s in jax.tree.leaves(state, is_leaf=lambda s: field in getattr(s, "_fields", ())) if hasattr(s, field)
    ]
    assert kept, state
    if dtype is not None:
        assert getattr(kept[0], field)["w"].dtype == dtype


def test_z_must_be_kept_in_a_float_dtype():
    with pytest.raises(ValueError, match="z_dtype"):
        adamfx.schedule_free_sgd(convention="torch", z_dtype="int8")


def test_eval_params_reach_through_optax_chain_and_refuse_other_states():
    params = {"w": jnp.ones(3)}
    tx = optax.chain(optax.clip_by_global_norm(1.0), adamfx.schedule_free_sgd(0.1, convention="torch"))
    state = tx.init(params)
    updates, state = tx.update({"w": jnp.ones(3)}, state, params)
    y = optax.apply_updates(params, updates)
    x = adamfx.schedule_free_eval_params(state, y)
    np.testing.assert_allclose(x["w"], 1 - 0.1 / np.sqrt(3), rtol=1e-6)  # c_1 = 1: x_2 = z_2
    with pytest.raises(ValueError, match="schedule-free"):
        adamfx.schedule_free_eval_params(adamfx.adam().init(params), params)
    zero = adamfx.schedule_free_sgd(0.1, b1=0.0, convention="torch")
    with pytest.raises(ValueError, match="b1=0"):
        adamfx.schedule_free_eval_params(zero.init(params), params)


def test_update_without_params_says_it_needs_them():
    tx = adamfx.schedule_free_adamw(convention="optax")
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="needs the params"):
        tx.update(params, tx.init(params))


def test_unknown_convention_names_the_available_ones():
    with pytest.raises(ValueError, match="'optax', 'torch'"):
        adamfx.schedule_free_sgd(convention="keras")


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_sharded_state_follows_the_params_and_equals_the_single_device_run():
    from tests.test_sharding import SPECS, host_tree, make_mesh, place, run_steps, single_device_run, specs_of

    tx = adamfx.schedule_free_adamw(1e-2, 2, weight_decay=0.1, convention="torch")
    mesh = make_mesh()
    grads_list = [host_tree(seed) for seed in range(1, 5)]
    params = place(host_tree(0), mesh)
    state = adamfx.init_sharded(tx, params)
    sf = next(s for s in state if isinstance(s, adamfx.ScheduleFreeState))
    assert specs_of(sf.z) == SPECS  # z lies where its parameter lies
    new_params, new_state = run_steps(tx, params, state, [place(g, mesh) for g in grads_list])
    reference = single_device_run(tx, grads_list)
    for x, y in zip(jax.tree.leaves((new_params, new_state)), jax.tree.leaves(reference), strict=True):
        np.testing.assert_array_max_ulp(np.asarray(x), np.asarray(y), maxulp=2)


def test_checkpoint_round_trip_resumes_the_same_run():
    from flax import serialization

    tx = adamfx.schedule_free_adamw(LR, W, weight_decay=0.05, convention="keras")
    with jax.enable_x64(True):
        params = {k: jnp.asarray(v) for k, v in PROBLEM.params_in(np.float64).items()}
        step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(g, s, p)))
        state = tx.init(params)
        for t in range(5):
            params, state = step(params, state, PROBLEM.grad(params, t))
        restored = adamfx.restore_state(tx, params, serialization.msgpack_restore(serialization.to_bytes(state)))
        runs = []
        for s in (state, restored):
            p = params
            for t in range(5, 10):
                p, s = step(p, s, PROBLEM.grad(p, t))
            runs.append(peers.flatten(adamfx.schedule_free_eval_params(s, p)))
    np.testing.assert_array_equal(runs[0], runs[1])


def _state_bytes(tx, params):
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tx.init(params)) if np.ndim(x) > 0)


def test_state_memory_is_adamws_for_adamw_and_sgd_momentums_for_sgd():
    """What the docstrings promise: z and v per parameter (AdamW: m and v), z alone for SGD (SGD: its trace)."""
    params = {"w": jnp.zeros((64, 64)), "b": jnp.zeros(64)}
    for convention in ("optax", "torch", "keras"):
        ours = adamfx.schedule_free_adamw(convention=convention)
        assert _state_bytes(ours, params) == _state_bytes(adamfx.adamw(convention=convention), params)
    sgd = adamfx.sgd(0.1, momentum=0.9, convention="torch")
    assert _state_bytes(adamfx.schedule_free_sgd(convention="torch"), params) == _state_bytes(sgd, params)
    half = adamfx.schedule_free_adamw(convention="torch", z_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)
    assert _state_bytes(half, params) == _state_bytes(adamfx.adamw(convention="torch"), params) // 2


def test_eval_params_of_an_nnx_optimizer_equal_the_functional_ones():
    from flax import nnx

    tx = adamfx.schedule_free_adamw(0.1, 2, weight_decay=0.1, convention="torch")
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    params = jax.tree.map(jnp.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    state = tx.init(params)
    inputs = jnp.arange(12.0).reshape(4, 3) / 10
    for _ in range(3):
        grads = nnx.grad(lambda m: jnp.mean(m(inputs) ** 2))(model)
        optimizer.update(model, grads)
        updates, state = tx.update(nnx.to_pure_dict(grads), state, params)
        params = optax.apply_updates(params, updates)
    ours = nnx.to_pure_dict(adamfx.schedule_free_eval_params(optimizer.opt_state, nnx.state(model, nnx.Param)))
    expected = adamfx.schedule_free_eval_params(state, params)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
