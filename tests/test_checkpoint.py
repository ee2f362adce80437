"""Checkpoints of the optimizer state (issue 6, item 5): orbax, flax.serialization, resume, rejection.

Reference for resuming: the same run without interruption (bit for bit). Here: configurations
(schedules, wrappers, groups, fused, storages); every registered optimizer x convention x variant
resumes bit for bit in test_generic.py (drawn from tests/registry.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import serialization
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import adamfx


def init_params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "dense": {"kernel": jnp.asarray(rng.standard_normal((8, 4)), jnp.float32), "bias": jnp.zeros(4)},
        "out": jnp.asarray(rng.standard_normal((4,)), jnp.float32),
    }


def batch(i):
    rng = np.random.default_rng(1000 + i)
    x = rng.standard_normal((16, 8)).astype(np.float32)
    y = np.sin(x.sum(axis=1)).astype(np.float32)
    if i == 7:
        x[0, 0] = np.nan  # a bad batch, for the optimizers that skip non-finite steps
    return jnp.asarray(x), jnp.asarray(y)


def loss(params, x, y):
    hidden = jnp.tanh(x @ params["dense"]["kernel"] + params["dense"]["bias"])
    return jnp.mean((hidden @ params["out"] - y) ** 2)


def make_step(tx):
    @jax.jit
    def step(params, state, x, y):
        updates, state = tx.update(jax.grad(loss)(params, x, y), state, params)
        return optax.apply_updates(params, updates), state

    return step


def train(tx, params, state, start, stop, lr_change_at=None):
    step = make_step(tx)
    for i in range(start, stop):
        if i == lr_change_at:
            state = adamfx.set_hyperparams(state, learning_rate=3e-3)
        params, state = step(params, state, *batch(i))
    return params, state


def labels(params):
    return {"dense": {"kernel": "body", "bias": "body"}, "out": "head"}


CONFIGURATIONS = {
    "adam-schedule-decay": lambda: adamfx.adam(optax.cosine_decay_schedule(1e-2, 20), decay=0.05),
    "adamw-lr-changed": lambda: adamfx.adamw(1e-2, weight_decay=0.1, weight_decay_mask=adamfx.exclude_bias_and_norm),
    "amsgrad-bf16-moments": lambda: adamfx.amsgrad(1e-2, convention="torch", mu_dtype=jnp.bfloat16),
    "finite-accumulate-ema": lambda: adamfx.apply_if_finite(adamfx.multi_steps(adamfx.with_ema(adamfx.adam(1e-2)), 2)),
    "groups": lambda: adamfx.partition({"body": adamfx.adamw(1e-2), "head": adamfx.adam(3e-2)}, labels),
    # the kernel (32 elements) keeps a buffer of its own; bias and out are packed (and masked)
    "fused-adamw": lambda: adamfx.fused(
        adamfx.adamw(1e-2, weight_decay=0.1, weight_decay_mask=adamfx.exclude_bias_and_norm), pack_below=16
    ),
    "fused-accumulate": lambda: adamfx.multi_steps(adamfx.fused(adamfx.amsgrad(1e-2, convention="torch")), 2),
    # lion, lamb
    "lion-int8-cautious": lambda: adamfx.lion(1e-3, weight_decay=0.1, mu_dtype="int8", cautious=True),
    "lamb-keras": lambda: adamfx.lamb(1e-2, weight_decay=0.1, convention="keras"),
}


def assert_bitwise_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


@pytest.mark.parametrize("name", CONFIGURATIONS)
@pytest.mark.parametrize("saver", ["orbax", "flax"])
def test_resumed_training_is_bit_identical_to_an_uninterrupted_run(name, saver, tmp_path):
    total, cut = 12, 5
    lr_change_at = 3 if name == "adamw-lr-changed" else None  # changed before the checkpoint: must survive it
    tx = CONFIGURATIONS[name]()
    params = init_params()
    uninterrupted = train(tx, params, tx.init(params), 0, total, lr_change_at)

    params, state = train(tx, params, tx.init(params), 0, cut, lr_change_at)
    if saver == "orbax":
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(tmp_path / "ckpt", {"params": params, "opt_state": state})
        checkpointer.wait_until_finished()
        raw = checkpointer.restore(tmp_path / "ckpt")  # no target: the raw form (dicts, lists)
    else:
        raw = serialization.msgpack_restore(serialization.to_bytes({"params": params, "opt_state": state}))

    # A fresh start: the optimizer re-created from its configuration, the params from their initialiser.
    tx = CONFIGURATIONS[name]()
    template = init_params(seed=1)
    restored_params = jax.tree.map(jnp.asarray, serialization.from_state_dict(template, raw["params"]))
    restored_state = adamfx.restore_state(tx, template, raw["opt_state"])
    assert_bitwise_equal(restored_state, state)
    resumed = train(tx, restored_params, restored_state, cut, total)
    assert_bitwise_equal(resumed, uninterrupted)
    if lr_change_at is not None:
        assert float(adamfx.hyperparams(resumed[1])["learning_rate"]) == pytest.approx(3e-3)


def test_orbax_restore_with_a_target_and_flax_from_bytes_work_unchanged(tmp_path):
    tx = adamfx.with_ema(adamfx.adamw(1e-2))
    params = init_params()
    params, state = train(tx, params, tx.init(params), 0, 3)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", state)
    checkpointer.wait_until_finished()
    assert_bitwise_equal(checkpointer.restore(tmp_path / "ckpt", jax.eval_shape(tx.init, params)), state)
    assert_bitwise_equal(serialization.from_bytes(tx.init(params), serialization.to_bytes(state)), state)


def test_sharded_state_saves_and_restores_with_its_sharding(tmp_path):
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    params = {"w": jax.device_put(jnp.arange(64.0).reshape(8, 8), NamedSharding(mesh, P(None, "model")))}
    tx = adamfx.adam(1e-2)
    state = adamfx.init_sharded(tx, params, zero_axis="data")
    _, state = tx.update(params, state, params)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", state)
    checkpointer.wait_until_finished()
    shardings = adamfx.state_shardings(tx, params, zero_axis="data")
    target = jax.tree.map(
        lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
        jax.eval_shape(tx.init, params),
        shardings,
    )
    restored = checkpointer.restore(tmp_path / "ckpt", target)
    assert_bitwise_equal(restored, state)
    assert restored[0].mu["w"].sharding.spec == P("data", "model")


# -- rejecting a checkpoint of another configuration -----------------------------------------------------


def checkpoint_of(tx, params):
    return serialization.msgpack_restore(serialization.to_bytes(tx.init(params)))


@pytest.mark.parametrize(
    "saved, loaded, expected",
    [
        (adamfx.adam(), adamfx.amsgrad(), ["nu_max", "missing from the checkpoint"]),
        (adamfx.adam(), adamfx.adam(weight_decay=1e-2), ["only in this optimizer ['weight_decay']", "stages"]),
        (adamfx.adamw(), adamfx.adam(), ["only in the checkpoint ['weight_decay']"]),
        (
            adamfx.adam(),
            adamfx.adam(mu_dtype=jnp.bfloat16),
            ["mu/dense/kernel: checkpoint (8, 4) float32, this optimizer (8, 4) bfloat16"],
        ),
        (adamfx.adam(), adamfx.with_ema(adamfx.adam()), ["['ema_momentum']"]),
        (adamfx.adam(), adamfx.multi_steps(adamfx.adam(), 2), ["acc_grads", "inner_opt_state"]),
    ],
)
def test_a_checkpoint_of_another_configuration_is_rejected_with_what_differs(saved, loaded, expected):
    params = init_params()
    raw = checkpoint_of(saved, params)
    with pytest.raises(ValueError, match="does not match this optimizer") as error:
        adamfx.restore_state(loaded, params, raw)
    for text in expected:
        assert text in str(error.value)


def test_a_checkpoint_for_other_params_is_rejected_with_the_shapes():
    params = init_params()
    bigger = {"dense": {"kernel": jnp.zeros((8, 5)), "bias": jnp.zeros(5)}, "out": jnp.zeros(5)}
    with pytest.raises(ValueError) as error:
        adamfx.check_compatible(adamfx.adam(), bigger, checkpoint_of(adamfx.adam(), params))
    assert "0/mu/dense/kernel: checkpoint (8, 4) float32, this optimizer (8, 5) float32" in str(error.value)


def test_orbax_metadata_is_checked_before_loading_and_catches_what_orbax_casts_silently(tmp_path):
    params = init_params()
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", adamfx.adam().init(params))
    checkpointer.wait_until_finished()
    metadata = checkpointer.metadata(tmp_path / "ckpt").item_metadata.tree
    adamfx.check_compatible(adamfx.adam(), params, metadata)  # same configuration: no error
    low_memory = adamfx.adam(mu_dtype=jnp.bfloat16)
    # orbax restores into a bfloat16 target without complaint (it casts) ...
    cast = checkpointer.restore(tmp_path / "ckpt", jax.eval_shape(low_memory.init, params))
    assert cast[0].mu["out"].dtype == jnp.bfloat16
    # ... the check says what differs.
    with pytest.raises(ValueError, match="0/mu/out: checkpoint \\(4,\\) float32, this optimizer \\(4,\\) bfloat16"):
        adamfx.check_compatible(low_memory, params, metadata)


def test_same_configuration_passes_and_restored_hyperparameters_come_from_the_checkpoint():
    params = init_params()
    state = adamfx.set_hyperparams(adamfx.adam(1e-3).init(params), learning_rate=5e-4, b1=0.8)
    raw = serialization.msgpack_restore(serialization.to_bytes(state))
    restored = adamfx.restore_state(adamfx.adam(1e-3), params, raw)
    assert float(adamfx.hyperparams(restored)["b1"]) == pytest.approx(0.8)
    assert float(restored[-1].hyperparams["learning_rate"]) == pytest.approx(5e-4)


# -- fused states ----------------------------------------------------------------------------------------


def test_fused_state_round_trips_through_flax_state_dicts():
    tx = CONFIGURATIONS["fused-adamw"]()
    params = init_params()
    params, state = train(tx, params, tx.init(params), 0, 3)
    state_dict = serialization.to_state_dict(state)
    assert sorted(state_dict) == ["inner"]
    assert sorted(state_dict["inner"]["0"]["mu"]) == ["['dense']['kernel']", "float32:0"]
    assert_bitwise_equal(serialization.from_state_dict(tx.init(init_params(seed=1)), state_dict), state)
    assert_bitwise_equal(serialization.from_bytes(tx.init(params), serialization.to_bytes(state)), state)


def test_a_fused_checkpoint_is_told_apart_from_an_unfused_one():
    params = init_params()
    fused = CONFIGURATIONS["fused-adamw"]()
    unfused = adamfx.adamw(1e-2, weight_decay=0.1, weight_decay_mask=adamfx.exclude_bias_and_norm)
    with pytest.raises(ValueError, match="missing from the checkpoint: inner/0/count"):
        adamfx.check_compatible(fused, params, checkpoint_of(unfused, params))
    repacked = adamfx.fused(unfused, pack_below=None)  # every leaf packed: the decayed kernel in "float32:1"
    with pytest.raises(ValueError) as error:
        adamfx.check_compatible(repacked, params, checkpoint_of(fused, params))
    assert "missing from the checkpoint: inner/0/mu/float32:1" in str(error.value)
    assert "this optimizer does not have: inner/0/mu/['dense']['kernel']" in str(error.value)
