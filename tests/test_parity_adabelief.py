"""Parity: adamfx.adabelief against optax.adabelief and adabelief-pytorch 0.2.1's AdaBelief, plus the paper.

Each case runs 300 jitted steps of the noisy multi-leaf quadratic of ``tests/peers.py``
(a matrix, a vector and a scalar): float64 within 1e-12 (max abs), float32 within
1e-5 relative of the peer's float32 run or, where that run is itself off its exact
trajectory (optax rounds ``1 - b2^t`` from a float32 ``b2``), of the peer's float64
run, at least as closely as the peer (``peers.assert_matches_peer``). The
convention defaults (eps, eps_root, rectify, decoupled decay) are not passed.

optax has no weight decay, rectification or AMSGrad for AdaBelief: its weight decay
cases are optax's own chains (``add_decayed_weights`` before ``scale_by_belief``
for coupled L2, between it and the learning rate for decoupled), and rectify and
amsgrad are checked against adabelief-pytorch only. adabelief-pytorch prints its
change log and settings on construction; the runs silence it.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamfx
from tests import peers

STEPS = 300
LR = 0.01
GAMMA = 0.99  # schedule: lr * GAMMA**t
WD = 0.05

#: name -> (adamfx keyword arguments, conventions that have a peer for it, runs by default)
CASES: Mapping[str, tuple[dict[str, Any], tuple[str, ...], bool]] = {
    "defaults": ({}, ("optax", "torch"), False),
    "betas_eps": ({"b1": 0.8, "b2": 0.99, "eps": 1e-8}, ("optax", "torch"), False),
    "eps_root": ({"eps": 1e-8, "eps_root": 1e-10}, ("optax",), False),
    "weight_decay": ({"weight_decay": WD}, ("optax", "torch"), False),
    "coupled": ({"weight_decay": WD, "decoupled": False}, ("optax", "torch"), False),
    "schedule": ({"schedule": True}, ("optax", "torch"), False),
    "nesterov": ({"nesterov": True, "weight_decay": WD, "schedule": True}, ("optax",), True),
    "no_rectify": ({"rectify": False, "eps": 1e-8}, ("torch",), False),
    "amsgrad": ({"rectify": False, "amsgrad": True, "eps": 1e-8}, ("torch",), False),
    "amsgrad_rectified": ({"amsgrad": True}, ("torch",), False),
    "no_sgd": ({"degenerated_to_sgd": False, "weight_decay": WD}, ("torch",), False),
    "all": ({"b1": 0.8, "weight_decay": WD, "schedule": True}, ("torch",), True),
}


def ours(kwargs, convention):
    kwargs = dict(kwargs)
    lr = (lambda count: LR * GAMMA**count) if kwargs.pop("schedule", False) else LR
    return adamfx.adabelief(lr, **kwargs, convention=convention)


def optax_peer(kwargs):
    kwargs = dict(kwargs)
    lr = (lambda count: LR * GAMMA**count) if kwargs.pop("schedule", False) else LR
    wd, decoupled = kwargs.pop("weight_decay", 0.0), kwargs.pop("decoupled", True)
    kwargs.setdefault("eps", 1e-16)
    belief = optax.scale_by_belief(**kwargs)
    if not wd:
        return optax.chain(belief, optax.scale_by_learning_rate(lr))
    if decoupled:
        return optax.chain(belief, optax.add_decayed_weights(wd), optax.scale_by_learning_rate(lr))
    return optax.chain(optax.add_decayed_weights(wd), belief, optax.scale_by_learning_rate(lr))


def torch_peer(kwargs, problem, dtype):
    from adabelief_pytorch import AdaBelief

    names = {"decoupled": "weight_decouple"}
    kwargs = dict(kwargs)
    scheduler = ("lambda", lambda t: GAMMA**t) if kwargs.pop("schedule", False) else None
    options = {names.get(k, k): v for k, v in kwargs.items() if k not in ("b1", "b2")}
    options["betas"] = (kwargs.get("b1", 0.9), kwargs.get("b2", 0.999))
    with contextlib.redirect_stdout(io.StringIO()):
        return peers.run_torch(
            AdaBelief, {"lr": LR, "print_change_log": False, **options}, problem, STEPS, dtype, scheduler=scheduler
        )


def peer_trajectory(case, convention, problem, dtype):
    kwargs = CASES[case][0]
    if convention == "torch":
        return torch_peer(kwargs, problem, dtype)
    return peers.run_transform(optax_peer(kwargs), problem, STEPS, dtype)


PARAMS = peers.case_params(CASES, conventions=lambda case: case[1], fast=lambda case: case[2])


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("case", "convention"), PARAMS)
def test_matches_peer(case, convention, dtype):
    peer = lambda problem, dtype: peer_trajectory(case, convention, problem, dtype)
    peers.check_against_peer(ours(CASES[case][0], convention), peer, STEPS, dtype)


def test_torch_defaults_are_the_convention():
    """adabelief-pytorch's own defaults (eps 1e-16 in s and the root, decoupled decay, rectify) need no argument."""
    from adabelief_pytorch import AdaBelief

    problem = peers.make_problem(np.float64)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        expected = peers.run_torch(AdaBelief, {"weight_decay": WD}, problem, 150, np.float64)
    assert "Rectification enabled" in printed.getvalue()
    actual = peers.run_transform(adamfx.adabelief(weight_decay=WD, convention="torch"), problem, 150, np.float64)
    assert peers.max_abs_diff(actual, expected) <= 1e-12


def numpy_adabelief(problem, steps, lr=LR, b1=0.9, b2=0.999, eps=1e-8):
    """AdaBelief, Algorithm 2 of Zhuang et al. (2020), in NumPy (eps both in s_t and in the denominator)."""
    p = problem.params_in(np.float64)
    m = {k: np.zeros_like(x) for k, x in p.items()}
    s = {k: np.zeros_like(x) for k, x in p.items()}
    rows = []
    for t in range(1, steps + 1):
        g = problem.grad(p, t - 1)
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            s[k] = b2 * s[k] + (1 - b2) * (g[k] - m[k]) ** 2 + eps
            m_hat, s_hat = m[k] / (1 - b1**t), s[k] / (1 - b2**t)
            p[k] = p[k] - lr * m_hat / (np.sqrt(s_hat) + eps)
        rows.append(peers.flatten(p))
    return np.stack(rows)


@pytest.mark.parametrize("convention", ["optax", "torch"])
def test_matches_the_paper(convention):
    problem = peers.make_problem(np.float64)
    tx = adamfx.adabelief(LR, eps=1e-8, eps_root=1e-8, rectify=False, convention=convention)
    actual = peers.run_transform(tx, problem, 200, np.float64)
    assert peers.max_abs_diff(actual, numpy_adabelief(problem, 200)) <= 1e-12


def numpy_rectified(problem, steps, convention, amsgrad=False, b1=0.9, b2=0.999, eps=1e-16):
    """Rectified AdaBelief in NumPy: RAdam's r_t (rho_t >= 5) on the belief s_t, SGD steps before.

    ``"torch"`` (adabelief-pytorch): eps on the raw root, and its rectified step ignores AMSGrad's
    maximum; ``"optax"`` (optax's RAdam and AMSGrad forms): eps on sqrt(s^), the maximum of s^.
    """
    p = problem.params_in(np.float64)
    m = {k: np.zeros_like(x) for k, x in p.items()}
    s = {k: np.zeros_like(x) for k, x in p.items()}
    s_max = {k: np.zeros_like(x) for k, x in p.items()}
    rows = []
    rho_inf = 2 / (1 - b2) - 1
    for t in range(1, steps + 1):
        g = problem.grad(p, t - 1)
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            s[k] = b2 * s[k] + (1 - b2) * (g[k] - m[k]) ** 2 + eps
            m_hat, s_hat = m[k] / (1 - b1**t), s[k] / (1 - b2**t)
            if amsgrad and convention == "optax":
                s_max[k] = s_hat = np.maximum(s_max[k], s_hat)
            guard = eps / math.sqrt(1 - b2**t) if convention == "torch" else eps
            if rho >= 5:
                r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
                p[k] = p[k] - LR * r * m_hat / (np.sqrt(s_hat) + guard)
            else:
                p[k] = p[k] - LR * m_hat
        rows.append(peers.flatten(p))
    return np.stack(rows)


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("convention", ["optax", "torch"])
def test_rectified_step_is_radams_on_the_belief(convention, amsgrad):
    """rectify=True, also where no peer has it (optax): the NumPy transcription of each convention's row."""
    problem = peers.make_problem(np.float64)
    tx = adamfx.adabelief(LR, eps_root=1e-16, rectify=True, amsgrad=amsgrad, convention=convention)
    actual = peers.run_transform(tx, problem, 150, np.float64)
    assert peers.max_abs_diff(actual, numpy_rectified(problem, 150, convention, amsgrad)) <= 1e-12


def grads_at(params, t):
    return jax.tree.map(lambda p: jnp.cos(p * (t + 1)) + 0.1 * t, params)


def run(tx, params, steps=6):
    state = tx.init(params)
    step = jax.jit(tx.update)
    for t in range(steps):
        updates, state = step(grads_at(params, t), state, params)
        params = optax.apply_updates(params, updates)
    return params, state


PARAMS_TREE = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.linspace(0.5, 1.0, 4), "s": jnp.asarray(0.3)}
BIG_TREE = {**PARAMS_TREE, "w": jnp.linspace(-1.0, 1.0, 64 * 80).reshape(64, 80)}  # int8 quantizes >= 4096 elements


@pytest.mark.parametrize("convention", [pytest.param("optax", marks=pytest.mark.slow), "torch"])
def test_fused_is_the_same(convention):
    tx = adamfx.adabelief(1e-2, amsgrad=True, weight_decay=1e-2, convention=convention)
    expected, _ = run(tx, PARAMS_TREE)
    actual, _ = run(adamfx.fused(tx), PARAMS_TREE)
    for k in expected:
        np.testing.assert_allclose(actual[k], expected[k], rtol=2e-6, atol=1e-7)


SLOW = pytest.mark.slow
STORAGES = [jnp.bfloat16, "int8", "factored"]


@pytest.mark.parametrize("nu_dtype", [x if x == "int8" else pytest.param(x, marks=SLOW) for x in STORAGES])
def test_storages_follow_float32(nu_dtype):
    """s_t kept in bf16, int8 or factored: stored in that form, and the run stays near the float32 one."""
    tx = adamfx.adabelief(1e-2, rectify=False, nu_dtype=nu_dtype, mu_dtype=jnp.bfloat16, convention="torch")
    params, state = run(tx, BIG_TREE)
    reference, _ = run(adamfx.adabelief(1e-2, rectify=False, convention="torch"), BIG_TREE)
    moments = state[0]
    assert moments.mu["w"].dtype == jnp.bfloat16
    if nu_dtype == "factored":
        assert moments.nu.row["w"].shape == (64,)
    elif nu_dtype == "int8":
        assert moments.nu.codes["w"].dtype == jnp.uint8
    else:
        assert moments.nu["w"].dtype == jnp.bfloat16
    for k in params:
        assert np.all(np.isfinite(params[k]))
        np.testing.assert_allclose(params[k], reference[k], atol=0.05)


def test_fused_rejects_factored():
    with pytest.raises(ValueError, match=r"elementwise|factored"):
        adamfx.fused(adamfx.adabelief(nu_dtype="factored"))


def test_hyperparameters_live_in_the_state():
    tx = adamfx.adabelief(1e-2, eps_root=1e-12, convention="torch")
    assert tx == adamfx.adabelief(1e-2, eps_root=1e-12, convention="torch")
    state = tx.init(PARAMS_TREE)
    values = adamfx.hyperparams(state)
    assert values["b2"] == pytest.approx(0.999) and values["eps_root"] == pytest.approx(1e-12)
    assert values["eps"] == pytest.approx(1e-16) and values["threshold"] == 5.0
    changed = adamfx.set_hyperparams(state, b1=0.5)
    assert adamfx.hyperparams(changed)["b1"] == pytest.approx(0.5)


def test_unknown_convention_names_the_available_ones():
    with pytest.raises(ValueError, match=r"optax.*torch"):
        adamfx.adabelief(convention="keras")
