"""Sanity checks of the peer harness itself (tests/peers.py), not of adamfx.

If these fail, parity failures elsewhere say nothing about adamfx.
"""

import os
import sys

import jax
import numpy as np
import optax
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import peers

STEPS = 300
LR = 1e-2  # large enough that the parameters travel ~2 units in 300 steps


@pytest.fixture(scope="module")
def problem():
    return peers.make_problem(np.float64)


def test_problem_is_deterministic_and_keeps_dtype(problem):
    assert set(problem.init_params) == {"w", "b", "s"}
    assert problem.init_params["s"].shape == ()
    for dtype in (np.float32, np.float64):
        params = problem.params_in(dtype)
        g1, g2 = problem.grad(params, 7), problem.grad(params, 7)
        for k in params:
            assert g1[k].dtype == dtype and g1[k].shape == params[k].shape
            np.testing.assert_array_equal(g1[k], g2[k])
    assert not np.array_equal(problem.grad(params, 0)["w"], problem.grad(params, 1)["w"])
    row = peers.flatten(problem.init_params)
    back = problem.unflatten(row)
    assert all(np.array_equal(back[k], problem.init_params[k]) for k in back)


def test_adam_torch_optax_paper_agree_float64(problem):
    ref = peers.numpy_adam(problem, STEPS, lr=LR)
    torch_t = peers.run_torch("Adam", {"lr": LR}, problem, STEPS)
    optax_t = peers.run_transform(optax.adam(LR), problem, STEPS, np.float64)
    assert ref.shape == torch_t.shape == optax_t.shape == (STEPS, 17)
    assert torch_t.dtype == optax_t.dtype == np.float64
    assert peers.max_abs_diff(ref[-1], peers.flatten(problem.init_params)) > 1.0  # it moves
    assert peers.max_abs_diff(torch_t, ref) <= 1e-12
    assert peers.max_abs_diff(optax_t, ref) <= 1e-12


def test_keras_adam_is_real_float64_and_differs_by_eps(problem):
    keras_t = peers.run_keras("Adam", {"learning_rate": LR}, problem, STEPS)
    assert keras_t.dtype == np.float64
    # Keras = the paper's Sec. 2 form, eps on the uncorrected sqrt(v).
    sec2 = peers.numpy_adam(problem, STEPS, lr=LR, eps=1e-7, eps_hat=True)
    assert peers.max_abs_diff(keras_t, sec2) <= 1e-12
    torch_t = peers.run_torch("Adam", {"lr": LR, "eps": 1e-7}, problem, STEPS)
    assert peers.max_abs_diff(keras_t, torch_t) > 1e-8
    # Without eps the two forms are the same algorithm.
    keras0 = peers.run_keras("Adam", {"learning_rate": LR, "epsilon": 0.0}, problem, STEPS)
    torch0 = peers.run_torch("Adam", {"lr": LR, "eps": 0.0}, problem, STEPS)
    assert peers.max_abs_diff(keras0, torch0) <= 1e-12


def test_float32_runs_stay_float32_and_close(problem):
    ref = peers.run_torch("Adam", {"lr": 1e-3}, problem, STEPS, np.float32)
    others = [
        peers.run_transform(optax.adam(1e-3), problem, STEPS, np.float32),
        peers.run_keras("Adam", {"learning_rate": 1e-3, "epsilon": 1e-8}, problem, STEPS, np.float32),
        peers.numpy_adam(problem, STEPS, lr=1e-3, dtype=np.float32),
    ]
    assert ref.dtype == np.float32
    for traj in others:
        assert traj.dtype == np.float32
        assert peers.max_rel_diff(traj, ref) <= 1e-5


@pytest.mark.parametrize("schedule", [("exponential", 0.99), ("inverse_time", 0.05)])
def test_keras_jit_matches_eager(problem, schedule):
    kwargs = {"learning_rate": LR, "weight_decay": 0.01}
    jitted = peers.run_keras("Adam", kwargs, problem, 40, schedule=schedule)
    eager = peers.run_keras("Adam", kwargs, problem, 40, schedule=schedule, jit=False)
    assert peers.max_abs_diff(jitted, eager) <= 1e-14


# Not optax.exponential_decay: it divides the int32 count by an int, which
# JAX promotes to float32 even under x64 (off by ~1e-7 in float64 runs).
@pytest.mark.parametrize(
    "kind, torch_arg, keras_arg, optax_schedule",
    [
        ("exponential", 0.99, 0.99, lambda i: LR * 0.99**i),
        ("inverse_time", lambda i: 1 / (1 + 0.05 * i), 0.05, lambda i: LR / (1 + 0.05 * i)),
    ],
)
def test_schedules_agree_on_plain_sgd(problem, kind, torch_arg, keras_arg, optax_schedule):
    torch_kind = "lambda" if kind == "inverse_time" else kind
    torch_t = peers.run_torch("SGD", {"lr": LR}, problem, STEPS, scheduler=(torch_kind, torch_arg))
    keras_t = peers.run_keras("SGD", {"learning_rate": LR}, problem, STEPS, schedule=(kind, keras_arg))
    optax_t = peers.run_transform(optax.sgd(optax_schedule), problem, STEPS, np.float64)
    assert peers.max_abs_diff(keras_t, torch_t) <= 1e-12
    assert peers.max_abs_diff(optax_t, torch_t) <= 1e-12


@pytest.mark.parametrize(
    "name",
    [
        "Adam",
        "AdamW",
        "Nadam",
        "Adamax",
        "SGD",
        "Adagrad",
        "RMSprop",
        "Adadelta",
        "Ftrl",
        "Lamb",
        "Lion",
        "Adafactor",
        "Muon",
    ],
)
def test_keras_float64_has_no_float32_ops(problem, name):
    ops = peers.keras_f32_ops(name, {}, problem)
    if name in ("Adafactor", "Muon"):  # known: keras ops.mean / ops.norm drop to f32
        assert ops
    else:
        assert not ops, ops[:3]


def test_global_config_restored(problem):
    import keras

    before = (keras.config.floatx(), jax.config.jax_enable_x64)
    peers.run_keras("Adam", {}, problem, 2)
    peers.run_transform(optax.adam(1e-3), problem, 2, np.float64)
    assert (keras.config.floatx(), jax.config.jax_enable_x64) == before
