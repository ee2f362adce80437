"""Parity: adamfx.adopt against optax.contrib.adopt and pytorch-optimizer 4.1.0's ADOPT, plus the paper.

Each case runs 300 jitted steps of the noisy multi-leaf quadratic of ``tests/peers.py``
(a matrix, a vector and a scalar): float64 within 1e-12 (max abs), float32 within 1e-5
relative (``peers.assert_matches_peer``). The convention defaults are not passed.

The peers differ in the index handed to the clipping schedule (optax: the steps
taken before, ``t - 1``; pytorch-optimizer: the step ``t``) and in weight decay
(optax has none: its cases are optax chains with ``add_decayed_weights``;
pytorch-optimizer's is coupled unless ``weight_decouple=True``); only optax has
``nesterov``, only pytorch-optimizer ``cautious`` (its mask compares the momentum with the
normalised, clipped gradient; ours with the raw one, which has the same signs). The
``clip_fn`` cases hand both a schedule of their own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.contrib import scale_by_adopt

import adamfx
from tests import peers

STEPS = 300
LR = 0.01
GAMMA = 0.99  # schedule: lr * GAMMA**t
WD = 0.05


def linear_clip(step):
    """A clipping schedule of the cases' own (jnp for adamfx and optax, a float for pytorch-optimizer)."""
    return 0.5 + 0.1 * step


#: name -> (adamfx keyword arguments, conventions that have a peer for it, runs by default)
CASES: Mapping[str, tuple[dict[str, Any], tuple[str, ...], bool]] = {
    "defaults": ({}, ("optax", "torch"), False),
    "betas_eps": ({"b1": 0.8, "b2": 0.99, "eps": 1e-3}, ("optax", "torch"), False),
    "weight_decay": ({"weight_decay": WD}, ("optax", "torch"), False),
    "decoupled": ({"weight_decay": WD, "decoupled": True}, ("optax", "torch"), False),
    "coupled": ({"weight_decay": WD, "decoupled": False}, ("optax", "torch"), False),
    "schedule": ({"schedule": True}, ("optax", "torch"), False),
    "no_clipping": ({"use_clipping": False}, ("optax", "torch"), False),
    "clip_fn": ({"clip_value_fn": linear_clip, "b2": 0.99}, ("optax", "torch"), False),
    "nesterov": ({"nesterov": True}, ("optax",), False),
    "all_optax": ({"nesterov": True, "weight_decay": WD, "schedule": True, "b2": 0.999}, ("optax",), True),
    "cautious": ({"cautious": True}, ("torch",), False),
    "cautious_decoupled": ({"cautious": True, "weight_decay": WD, "decoupled": True}, ("torch",), False),
    "all_torch": ({"weight_decay": WD, "schedule": True, "b2": 0.999, "cautious": True}, ("torch",), True),
}


def _lr(kwargs):
    return (lambda count: LR * GAMMA**count) if kwargs.pop("schedule", False) else LR


def ours(kwargs, convention):
    kwargs = dict(kwargs)
    return adamfx.adopt(_lr(kwargs), **kwargs, convention=convention)


def optax_peer(kwargs):
    kwargs = dict(kwargs)
    lr = _lr(kwargs)
    wd, decoupled = kwargs.pop("weight_decay", 0.0), kwargs.pop("decoupled", True)
    core = scale_by_adopt(**kwargs)
    if not wd:
        return optax.chain(core, optax.scale_by_learning_rate(lr))
    if decoupled:
        return optax.chain(core, optax.add_decayed_weights(wd), optax.scale_by_learning_rate(lr))
    return optax.chain(optax.add_decayed_weights(wd), core, optax.scale_by_learning_rate(lr))


def torch_peer(kwargs, problem, dtype):
    from pytorch_optimizer import ADOPT

    kwargs = dict(kwargs)
    scheduler = ("lambda", lambda t: GAMMA**t) if kwargs.pop("schedule", False) else None
    options = {"lr": LR, "betas": (kwargs.pop("b1", 0.9), kwargs.pop("b2", 0.9999))}
    if "decoupled" in kwargs:
        options["weight_decouple"] = kwargs.pop("decoupled")
    if not kwargs.pop("use_clipping", True):
        options["clip_lambda"] = None
    if "clip_value_fn" in kwargs:
        options["clip_lambda"] = kwargs.pop("clip_value_fn")
    return peers.run_torch(ADOPT, {**options, **kwargs}, problem, STEPS, dtype, scheduler=scheduler)


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


def test_the_peers_clip_at_different_steps():
    """The one difference of the defaults: optax clips step 2 at 1, pytorch-optimizer at 2 ** 0.25."""
    problem = peers.make_problem(np.float64, noise_scale=5.0)  # large normalised gradients: the clip binds
    optax_run = peers.run_transform(adamfx.adopt(LR), problem, 20, np.float64)
    torch_run = peers.run_transform(adamfx.adopt(LR, convention="torch"), problem, 20, np.float64)
    np.testing.assert_array_equal(optax_run[0], peers.flatten(problem.params_in(np.float64)))
    np.testing.assert_array_equal(torch_run[0], optax_run[0])
    assert peers.max_abs_diff(optax_run[1:], torch_run[1:]) > 1e-4


def numpy_adopt(problem, steps, lr=LR, b1=0.9, b2=0.9999, eps=1e-6, first_index=1):
    """ADOPT, Algorithm 2 of Taniguchi et al. (2024) with the clipping c_t = t^(1/4) of Sec. 5, in NumPy.

    The paper's step 0 (``v_0 = g_0^2``, ``m_0 = 0``, no update) is our t = 1; its step t
    clips at ``t^(1/4)``, i.e. at ``(t - 1)^(1/4)`` in our counting (``first_index=0``, optax)
    -- the authors' code (and pytorch-optimizer) clips at ``t^(1/4)`` (``first_index=1``).
    """
    p = problem.params_in(np.float64)
    m = {k: np.zeros_like(x) for k, x in p.items()}
    v = {}
    rows = []
    for t in range(1, steps + 1):
        g = problem.grad(p, t - 1)
        for k in p:
            if t == 1:
                v[k] = g[k] ** 2
                continue
            c = (t - 1 + first_index) ** 0.25
            m[k] = b1 * m[k] + (1 - b1) * np.clip(g[k] / np.maximum(np.sqrt(v[k]), eps), -c, c)
            p[k] = p[k] - lr * m[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
        rows.append(peers.flatten(p))
    return np.stack(rows)


@pytest.mark.parametrize(("convention", "first_index"), [("optax", 0), ("torch", 1)])
def test_matches_the_paper(convention, first_index):
    problem = peers.make_problem(np.float64, noise_scale=3.0)
    actual = peers.run_transform(adamfx.adopt(LR, convention=convention), problem, 200, np.float64)
    assert peers.max_abs_diff(actual, numpy_adopt(problem, 200, first_index=first_index)) <= 1e-12


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


@pytest.mark.parametrize("convention", ["optax", pytest.param("torch", marks=pytest.mark.slow)])
def test_fused_is_the_same(convention):
    tx = adamfx.adopt(1e-2, nesterov=True, weight_decay=1e-2, convention=convention)
    expected, _ = run(tx, PARAMS_TREE)
    actual, _ = run(adamfx.fused(tx), PARAMS_TREE)
    for k in expected:
        np.testing.assert_allclose(actual[k], expected[k], rtol=2e-6, atol=1e-7)


SLOW = pytest.mark.slow
STORAGES = [jnp.bfloat16, "int8", "factored"]


@pytest.mark.parametrize("nu_dtype", [x if x == "factored" else pytest.param(x, marks=SLOW) for x in STORAGES])
def test_storages_follow_float32(nu_dtype):
    """v in bf16, int8 or factored and m in bf16: kept in that form, the run stays near the float32 one."""
    tx = adamfx.adopt(1e-2, nu_dtype=nu_dtype, mu_dtype=jnp.bfloat16, convention="torch")
    params, state = run(tx, BIG_TREE)
    reference, _ = run(adamfx.adopt(1e-2, convention="torch"), BIG_TREE)
    v, m = state[0].moment, state[2].moment
    assert m["w"].dtype == jnp.bfloat16
    if nu_dtype == "factored":
        assert v.row["w"].shape == (64,)
    elif nu_dtype == "int8":
        assert v.codes["w"].dtype == jnp.uint8
    else:
        assert v["w"].dtype == jnp.bfloat16
    for k in params:
        assert np.all(np.isfinite(params[k]))
        np.testing.assert_allclose(params[k], reference[k], atol=0.05)


@pytest.mark.parametrize("kwargs", [{"nu_dtype": "factored"}, {"cautious": True}], ids=["factored", "cautious"])
def test_fused_rejects_per_leaf_reductions(kwargs):
    with pytest.raises(ValueError, match="elementwise"):
        adamfx.fused(adamfx.adopt(**kwargs))


def test_hyperparameters_live_in_the_state():
    tx = adamfx.adopt(1e-2, b2=0.99, convention="torch")
    assert tx == adamfx.adopt(1e-2, b2=0.99, convention="torch")
    state = tx.init(PARAMS_TREE)
    values = adamfx.hyperparams(state)
    assert values["b2"] == pytest.approx(0.99) and values["b1"] == pytest.approx(0.9)
    assert values["eps"] == pytest.approx(1e-6)
    changed = adamfx.set_hyperparams(state, eps=1e-3, b1=0.5)
    assert adamfx.hyperparams(changed)["eps"] == pytest.approx(1e-3)
    assert adamfx.hyperparams(changed)["b1"] == pytest.approx(0.5)


def test_clip_value_fn_must_be_callable():
    with pytest.raises(ValueError, match="clip_value_fn"):
        adamfx.adopt(clip_value_fn=1.0)


def test_unknown_convention_names_the_available_ones():
    with pytest.raises(ValueError, match=r"optax.*torch"):
        adamfx.adopt(convention="keras")


def test_quarter_power_is_the_peers_schedule():
    assert float(adamfx.quarter_power(jnp.asarray(16))) == 2.0
    assert math.pow(16, 0.25) == 2.0
