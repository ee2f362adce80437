"""adafactor beyond parity: fused, sharding, hyperparameters in the state, storages, bad input.

Parity with the peers and the paper is in ``tests/test_parity_adafactor.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import adamfx
from adamfx._src.stages.factored_rms import FactoredRmsState
from adamfx._src.storage.factored import Factored
from tests import test_sharding

CONVENTIONS = ("optax", "torch", "keras")


def SLOW_CONVENTIONS(*names):
    return [pytest.param(name, marks=pytest.mark.slow) for name in names]


def tree(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    shapes = {"big": (128, 128), "w": (8, 16), "b": (16,), "s": ()}
    return {k: jnp.asarray(rng.standard_normal(shape).astype(dtype)) for k, shape in shapes.items()}


def run(tx, params, steps=2, state=None):
    state = tx.init(params) if state is None else state

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return jax.tree.map(jnp.add, params, updates), state

    for i in range(steps):
        params, state = step(params, state, tree(i + 1, np.asarray(params["b"]).dtype))
    return params, state


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_fused_is_rejected_naming_the_per_leaf_stage(convention):
    with pytest.raises(ValueError, match=r"fused.*ScaleByFactoredRms.*not elementwise"):
        adamfx.fused(adamfx.adafactor(convention=convention, weight_decay=0.1))


def test_fused_rejects_each_per_leaf_stage_even_without_the_second_moment():
    """Update clipping and the parameter scale are per-leaf reductions too."""
    for tx, name in [
        (adamfx.clip_by_block_rms(1.0), "ClipByBlockRms"),
        (adamfx.relative_step_size(1e-2), "RelativeStepSize"),
    ]:
        with pytest.raises(ValueError, match=f"{name}.*not elementwise"):
            adamfx.fused(tx)
    adamfx.fused(adamfx.relative_step_size(1e-2, parameter_scale=False))  # elementwise: accepted


def second_moment(state) -> Factored:
    found = [
        x
        for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, FactoredRmsState))
        if isinstance(x, FactoredRmsState)
    ]
    return found[0].nu


SPECS = {"big": P("data", "model"), "w": P(None, "model"), "b": P("model"), "s": P()}


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
@pytest.mark.parametrize("convention", ["keras", *SLOW_CONVENTIONS("optax", "torch")])
def test_jitted_sharded_run_equals_the_unsharded_run(convention):
    """Row/column means, RMS clipping and the parameter scale reduce over sharded axes: XLA adds the collectives."""
    with jax.enable_x64(True):
        tx = adamfx.adafactor(convention=convention, momentum=0.9, weight_decay=0.1, min_dim_size_to_factor=8)
        mesh = test_sharding.make_mesh()
        params = tree(0, np.float64)
        sharded = jax.tree.map(lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec)), params, SPECS)
        expected, expected_state = run(tx, params)
        actual, actual_state = run(tx, sharded, state=adamfx.init_sharded(tx, sharded))
        assert actual["big"].sharding.spec == SPECS["big"]
        nu = second_moment(actual_state)
        assert nu.row["w"].shape == (8,) and nu.col["big"].shape == (128,)  # factored, not the whole moment
        for x, y in zip(
            jax.tree.leaves((actual, actual_state)), jax.tree.leaves((expected, expected_state)), strict=True
        ):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("convention", ["torch", *SLOW_CONVENTIONS("optax", "keras")])
def test_set_hyperparams_equals_an_optimizer_built_with_those_values(convention):
    params = tree()
    values = {"learning_rate": 0.02, "decay_rate": 0.7, "clipping_threshold": 1.5, "eps_scale": 1e-2, "momentum": 0.5}
    built = adamfx.adafactor(**values, convention=convention, weight_decay=0.1)
    changed = adamfx.adafactor(momentum=0.9, convention=convention, weight_decay=0.1)
    state = adamfx.set_hyperparams(changed.init(params), **values)
    hyperparams = adamfx.hyperparams(state)
    assert {k: float(hyperparams[k]) for k in values} == pytest.approx(values)
    for x, y in zip(
        jax.tree.leaves(run(changed, params, state=state)), jax.tree.leaves(run(built, params)), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_equal_arguments_build_equal_optimizers():
    assert adamfx.adafactor(convention="keras", weight_decay=0.1) == adamfx.adafactor(
        convention="keras", weight_decay=0.1
    )
    assert hash(adamfx.adafactor(momentum=0.9)) == hash(adamfx.adafactor(momentum=0.9))
    assert adamfx.adafactor(convention="torch") != adamfx.adafactor(convention="keras")


def test_factoring_rule_of_each_convention():
    """optax factors a matrix when both sides are >= 128; PyTorch and Keras every matrix (a side of 1 stays whole)."""
    params = {"big": jnp.zeros((128, 128)), "w": jnp.zeros((8, 16)), "col": jnp.zeros((8, 1)), "b": jnp.zeros(16)}
    for convention, factored in [("optax", {"big"}), ("torch", {"big", "w"}), ("keras", {"big", "w"})]:
        nu = second_moment(adamfx.adafactor(convention=convention).init(params))
        assert {k for k in params if nu.col[k].shape != (1,)} == factored
        assert nu.full["b"].shape == (16,) and nu.full["col"].shape == (8, 1)
    nu = adamfx.adafactor(min_dim_size_to_factor=8).init(params)[0].nu
    assert nu.row["w"].shape == (8,) and nu.col["w"].shape == (16,)


@pytest.mark.parametrize(
    ("mu_dtype", "stored"), [(jnp.bfloat16, jnp.bfloat16), pytest.param("int8", jnp.uint8, marks=pytest.mark.slow)]
)  # int8 codes: uint8
def test_momentum_storage(mu_dtype, stored):
    params = tree()
    exact = run(adamfx.adafactor(0.05, momentum=0.9), params)[0]
    low, state = run(adamfx.adafactor(0.05, momentum=0.9, mu_dtype=mu_dtype), params)
    mu = jax.tree.leaves(state[3].mu)
    assert any(x.dtype == stored for x in mu)
    for x, y in zip(jax.tree.leaves(low), jax.tree.leaves(exact), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=2e-3)  # 2 steps of ~0.05 RMS(p)


def test_first_update_of_a_matrix_by_hand():
    """PyTorch's convention, step 1: v^ = r c^T / mean(r) with r, c the row/column means of g^2."""
    g = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    p = jnp.ones((2, 2))
    tx = adamfx.adafactor(convention="torch")
    updates, _ = tx.update(g, tx.init(p), p)
    r, c = (g**2).mean(1), (g**2).mean(0)
    u = g / jnp.sqrt(jnp.outer(r, c) / r.mean())
    u = u / max(1.0, float(jnp.sqrt((u**2).mean())))
    np.testing.assert_allclose(np.asarray(updates), -1e-2 * np.asarray(u), rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_dim_size_to_factor": 0}, "min_dim_size_to_factor=0 is invalid"),
        ({"min_dim_size_to_factor": 2.5}, "min_dim_size_to_factor=2.5 is invalid"),
        ({"clipping_threshold": 0.5}, "clipping_threshold=0.5 is invalid"),
        ({"decay_rate": -0.8}, "decay_rate=-0.8 is invalid"),
        ({"eps_scale": None}, "eps_scale=None is invalid"),
        ({"convention": "jax"}, "convention='jax' is invalid.*optax.*torch.*keras"),
        ({"mu_dtype": "factored", "momentum": 0.9}, "mu_dtype=.* is invalid: only a second moment"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        adamfx.adafactor(**kwargs)


def test_parameter_scale_needs_the_params():
    tx = adamfx.adafactor()
    with pytest.raises(ValueError, match="needs the params"):
        tx.update(jnp.ones(3), tx.init(jnp.ones(3)))
