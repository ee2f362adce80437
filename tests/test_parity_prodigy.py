"""Parity: prodigy against optax.contrib.prodigy and prodigyopt's Prodigy, and the paper in NumPy.

Every case runs ``STEPS`` steps of the noisy multi-leaf quadratic of ``tests/peers.py``
(a matrix, a vector and a scalar): float64 must agree to <= 1e-10 (max abs); float32
to <= 1e-5 relative with the peer's float32 run, or -- where that run is itself off its
exact trajectory (prodigyopt keeps d and its sums as Python doubles) -- with the peer's
float64 run, no farther than the peer (``peers.assert_matches_peer``).

Float32 runs start from ``d0 = F32_D0``: from the default 1e-6, d grows about 1.5x per
step for ~35 steps (to ~0.76 here), and that growth phase amplifies float32 rounding
~1e5-fold: the peers' own float32 runs end 0.12 (optax) and 0.11 (prodigyopt) away from
their float64 runs, and 1.4e-4 apart from each other, so no float32 implementation can
agree to 1e-5 there. From d0 = 0.1 their float32-vs-float64 spread is ~2e-6.

Also: the sums are global under ``fused``; ``d`` and the sums survive a checkpoint and
``set_hyperparams``. One case per convention runs by default; the grid is slow.
"""

from __future__ import annotations

import dataclasses
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

STEPS = 200
GAMMA = 0.99  # exponential schedule: lr * GAMMA**t
WD = 0.05
F64_TOLERANCE = 1e-10
F32_D0 = 0.1  # float32 runs start d near its final value (module docstring)


def optax_prodigy(kwargs: Mapping[str, Any], schedule: bool):
    kwargs = dict(kwargs)
    assert kwargs.pop("use_bias_correction", True), "optax always bias-corrects"
    betas = (kwargs.pop("b1", 0.9), kwargs.pop("b2", 0.999))
    names = {"b3": "beta3", "d0": "estim_lr0", "d_coef": "estim_lr_coef"}
    kwargs = {names.get(k, k): v for k, v in kwargs.items()}
    weight_decay, decoupled = kwargs.pop("weight_decay", 0.0), kwargs.pop("decoupled", True)
    lr = (lambda count: GAMMA**count) if schedule else 1.0
    coupled = [] if decoupled else [optax.add_decayed_weights(weight_decay)]
    decayed = weight_decay if decoupled else 0.0
    return optax.chain(*coupled, optax.contrib.prodigy(lr, betas, weight_decay=decayed, **kwargs))


def torch_prodigy(kwargs: Mapping[str, Any], problem, dtype, schedule: bool) -> np.ndarray:
    from prodigyopt import Prodigy

    kwargs = dict(kwargs)
    betas = (kwargs.pop("b1", 0.9), kwargs.pop("b2", 0.999))
    kwargs = {{"b3": "beta3", "decoupled": "decouple"}.get(k, k): v for k, v in kwargs.items()}
    scheduler = ("exponential", GAMMA) if schedule else None
    return peers.run_torch(Prodigy, {"lr": 1.0, "betas": betas, **kwargs}, problem, STEPS, dtype, scheduler=scheduler)


@dataclasses.dataclass(frozen=True)
class Case:
    kwargs: Mapping[str, Any]
    schedule: bool = False
    only: tuple[str, ...] = ("optax", "torch")
    fast: bool = False


CASES = {
    "defaults": Case({}),
    "hyperparameters": Case({"b1": 0.8, "b2": 0.99, "b3": 0.95, "eps": 1e-6, "d0": 1e-4, "d_coef": 0.5}),
    # d0 = 1e-3: while p has moved ~d0 from p0, <g, p0 - p> carries a 1-ulp difference of p (prodigyopt updates
    # p in two roundings, p(1 - wd dlr) then - dlr m / den; an optax update is one, p + u) as ulp / d0 ~ 2e-10
    # of d, which d's growth phase amplifies to ~1e-8; from d0 = 1e-3 that is ~1e-13.
    "decoupled": Case({"weight_decay": WD, "d0": 1e-3}),
    "coupled": Case({"weight_decay": WD, "decoupled": False}),
    "schedule": Case({}, schedule=True),
    "safeguard_warmup": Case({"safeguard_warmup": True}),
    "bias_correction": Case({"use_bias_correction": True}, only=("torch",)),
    "no_bias_correction": Case({"use_bias_correction": False}, only=("torch",)),
    "growth_rate": Case({"growth_rate": 1.05}, only=("torch",)),
    "all-optax": Case({"weight_decay": WD, "d_coef": 2.0, "b3": 0.98}, schedule=True, only=("optax",), fast=True),
    "all-torch": Case({"weight_decay": WD, "growth_rate": 1.1, "d0": 1e-5}, schedule=True, only=("torch",), fast=True),
}
PARAMS = peers.case_params(CASES, conventions=lambda case: case.only, fast=lambda case: case.fast)


def peer_trajectory(case: Case, convention: str, problem, dtype) -> np.ndarray:
    if convention == "torch":
        return torch_prodigy(case.kwargs, problem, dtype, case.schedule)
    return peers.run_transform(optax_prodigy(case.kwargs, case.schedule), problem, STEPS, dtype)


def ours(case: Case, convention: str, **overrides):
    lr = (lambda count: GAMMA**count) if case.schedule else 1.0
    return adamfx.prodigy(lr, convention=convention, **{**case.kwargs, **overrides})


@pytest.mark.parametrize("dtype", [np.float64, pytest.param(np.float32, marks=pytest.mark.slow)], ids=["f64", "f32"])
@pytest.mark.parametrize(("name", "convention"), PARAMS)
def test_matches_peer(name, convention, dtype):
    case = CASES[name]
    if dtype == np.float32:
        case = dataclasses.replace(case, kwargs={**case.kwargs, "d0": F32_D0})
    peer = lambda problem, dtype: peer_trajectory(case, convention, problem, dtype)
    peers.check_against_peer(ours(case, convention), peer, STEPS, dtype, f64_tolerance=F64_TOLERANCE)


@pytest.mark.slow
def test_growth_rate_limits_d_per_step():
    """prodigyopt's rule: d_{k+1} <= growth_rate d_k once d has left d0 (the optax convention applies it too)."""
    problem = peers.make_problem(np.float64)
    with peers.precision(np.float64):
        tx = adamfx.prodigy(growth_rate=1.05, convention="optax")
        params = {k: jnp.asarray(v) for k, v in problem.params_in(np.float64).items()}
        state, ds, update = tx.init(params), [], jax.jit(tx.update)
        for step in range(60):
            updates, state = update(problem.grad(params, step), state, params)
            params = optax.apply_updates(params, updates)
            ds.append(float(state[0].d))
    ratios = np.array(ds[1:]) / np.array(ds[:-1])
    first = int(np.argmax(ratios > 1))  # the step that leaves d0 is not limited (prodigyopt's `if d == d0`)
    assert ratios[first] > 1.05 and ds[-1] > 10 * 1e-6
    assert np.all(ratios[first + 1 :] <= 1.05 * (1 + 1e-12)) and np.all(ratios[first + 1 :] > 1.04)


def test_growth_rate_is_checked():
    for bad in (0.5, None, math.nan, -math.inf):
        with pytest.raises(ValueError, match=r"growth_rate=.* is invalid"):
            adamfx.prodigy(growth_rate=bad)
    adamfx.prodigy(growth_rate=1.0)  # the edge: d never grows past d's first estimate
    for growth_rate in (math.inf, 2.0):  # a recipe choice, not in the state (one structure for every value)
        assert "growth_rate" not in adamfx.hyperparams(adamfx.prodigy(growth_rate=growth_rate).init({"w": jnp.ones(2)}))


def _run(tx, problem, steps, state=None, params=None, start=0):
    """Steps ``start .. steps - 1``, jitted, from ``params`` and ``state`` (or the start); returns (params, state)."""
    params = {k: jnp.asarray(v) for k, v in problem.init_params.items()} if params is None else params
    state = tx.init(params) if state is None else state
    step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(g, s, p)))
    for k in range(start, steps):
        params, state = step(params, state, problem.grad(params, k))
    return params, state


@pytest.mark.slow
def test_fused_runs_the_global_sums_over_all_buffers():
    """fused(prodigy) packs the leaves into flat buffers (two groups with a mask): the sums still span all of them."""
    problem = peers.make_problem(np.float64, shapes={"w": (3, 4), "b": (4,), "s": (), "big": (70, 70)})
    mask = {"w": True, "b": False, "s": False, "big": True}
    tx = adamfx.prodigy(weight_decay=WD, weight_decay_mask=mask, convention="torch")
    with peers.precision(np.float64):
        expected, plain_state = _run(tx, problem, 40)
        actual, fused_state = _run(adamfx.fused(tx), problem, 40)
        assert sorted(fused_state.inner[0].s) == ["['big']", "float64:0", "float64:1"]
    assert float(plain_state[0].d) > 1e-4  # d moved
    assert float(fused_state.inner[0].d) == pytest.approx(float(plain_state[0].d), rel=1e-12)
    for k in expected:
        np.testing.assert_allclose(actual[k], expected[k], rtol=0, atol=1e-12)


@pytest.mark.slow
def test_d_and_the_sums_survive_a_checkpoint_and_set_hyperparams():
    """Resuming from a saved state (d, d_max, r, s, p0) continues the trajectory exactly; set_hyperparams
    changes d_coef without recompiling and takes effect from the next step (as prodigyopt's group['d_coef'])."""
    problem = peers.make_problem(np.float64)
    tx = adamfx.prodigy(convention="torch")
    with peers.precision(np.float64):
        straight, _ = _run(tx, problem, 30)
        half, state = _run(tx, problem, 15)
        restored = adamfx.restore_state(tx, half, jax.tree.map(np.asarray, state))
        params = half
        step = jax.jit(lambda p, s, g: tx.update(g, s, p))
        for k in range(15, 30):
            updates, restored = step(params, restored, problem.grad(params, k))
            params = optax.apply_updates(params, updates)
        resumed = params
        changed = adamfx.set_hyperparams(state, d_coef=2.0)
        _, doubled = step(half, changed, problem.grad(half, 15))
        _, plain = step(half, state, problem.grad(half, 15))
        assert float(adamfx.hyperparams(changed)["d_coef"]) == 2.0
    for k in straight:
        np.testing.assert_array_equal(resumed[k], straight[k])
    assert step._cache_size() == 1
    assert float(doubled[0].d) > float(plain[0].d) > 1e-4  # d^ doubled (d is still growing at step 15)


# -- the paper -----------------------------------------------------------------------------------


def numpy_prodigy(problem, steps, b1=0.9, b2=0.999, d0=1e-6, dtype=np.float64) -> np.ndarray:
    """Algorithm 4 of Mishchenko & Defazio (2024) in NumPy, eps = 0, constant gamma_k = 1.

    (With eps = 0 the paper's ``d_k eps`` and the implementations' ``d_{k+1} eps`` agree;
    its ``(1 - sqrt(b2))`` weights of r and s cancel in d^.)
    """
    x = problem.params_in(dtype)
    x0 = {k: v.copy() for k, v in x.items()}
    m, v, s = ({k: np.zeros_like(p) for k, p in x.items()} for _ in range(3))
    r, d, beta3 = 0.0, d0, math.sqrt(b2)
    rows = []
    for k in range(steps):
        g = problem.grad(x, k)
        r = beta3 * r + (1 - beta3) * d**2 * sum(float(np.sum(g[n] * (x0[n] - x[n]))) for n in x)
        for n in x:
            m[n] = b1 * m[n] + (1 - b1) * d * g[n]
            v[n] = b2 * v[n] + (1 - b2) * d**2 * g[n] ** 2
            s[n] = beta3 * s[n] + (1 - beta3) * d**2 * g[n]
        d_next = max(d, r / sum(float(np.sum(np.abs(s[n]))) for n in x))
        for n in x:
            x[n] = x[n] - d * m[n] / np.sqrt(v[n])
        d = d_next
        rows.append(peers.flatten(x))
    return np.stack(rows)


def test_matches_the_paper_in_numpy():
    problem = peers.make_problem(np.float64)
    expected = numpy_prodigy(problem, STEPS)
    actual = peers.run_transform(adamfx.prodigy(eps=0.0, convention="torch"), problem, STEPS, np.float64)
    assert np.max(np.abs(expected[-1] - expected[0])) > 0.1
    assert peers.max_abs_diff(actual, expected) <= F64_TOLERANCE


@pytest.mark.parametrize("spec", [{"mu_dtype": jnp.bfloat16, "nu_dtype": jnp.bfloat16}, {"mu_dtype": "int8"}])
@pytest.mark.slow
def test_low_precision_moments_stay_near_the_float32_trajectory(spec):
    problem = peers.make_problem(np.float32, shapes={"w": (64, 80), "b": (32,), "s": ()})
    reference = peers.run_transform(adamfx.prodigy(d0=F32_D0), problem, 150, np.float32)
    low = peers.run_transform(adamfx.prodigy(d0=F32_D0, **spec), problem, 150, np.float32)
    rms = lambda x: float(np.sqrt(np.mean(np.square(x))))
    moved = rms(reference[-1] - reference[0])  # int8 rounds m by blocks: Adam's int8 here is 0.019 RMS of 1.35
    assert moved > 0.5 and rms(low - reference) < 0.05 * moved


def test_factored_storage_is_refused():
    with pytest.raises(ValueError, match=r"prodigy\(nu_dtype='factored'\) is invalid"):
        adamfx.prodigy(nu_dtype="factored")


@pytest.mark.slow
@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
@pytest.mark.parametrize("name", ["prodigy", "ademamix"])
def test_sharded_state_follows_the_params_and_equals_the_single_device_run(name):
    """The state (moments, s, p0 like the params; d and the sums replicated) keeps its sharding through jitted
    steps, and the run equals the single-device one (Prodigy's global sums: up to their summation order)."""
    from tests import test_sharding as sharding

    tx = adamfx.prodigy(weight_decay=0.01) if name == "prodigy" else adamfx.ademamix(1e-2, alpha_warmup=3)
    mesh = sharding.make_mesh()
    grads_list = [sharding.host_tree(seed) for seed in range(1, 5)]
    params = sharding.place(sharding.host_tree(0), mesh)
    state = adamfx.init_sharded(tx, params)
    new_params, new_state = sharding.run_steps(tx, params, state, [sharding.place(g, mesh) for g in grads_list])
    assert sharding.specs_of(new_params) == sharding.SPECS
    for before, after in zip(jax.tree.leaves(state), jax.tree.leaves(new_state), strict=True):
        assert sharding.same_sharding(after, before)
    reference = sharding.single_device_run(tx, grads_list)
    for x, y in zip(jax.tree.leaves((new_params, new_state)), jax.tree.leaves(reference), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-6, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["prodigy", "ademamix"])
def test_flax_msgpack_checkpoint_resumes_bit_identically(name):
    from flax import serialization

    problem = peers.make_problem(np.float32)
    build = {"prodigy": lambda: adamfx.prodigy(growth_rate=1.1), "ademamix": lambda: adamfx.ademamix(alpha_warmup=9)}
    straight, _ = _run(build[name](), problem, 12)
    half, state = _run(build[name](), problem, 6)
    raw = serialization.msgpack_restore(serialization.to_bytes(state))
    tx = build[name]()  # a fresh optimizer from its configuration
    restored = adamfx.restore_state(tx, half, raw)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        assert a.dtype == b.dtype and np.asarray(a).tobytes() == np.asarray(b).tobytes()
    params, _ = _run(tx, problem, 12, restored, half, start=6)
    for k in straight:
        assert np.asarray(params[k]).tobytes() == np.asarray(straight[k]).tobytes()
