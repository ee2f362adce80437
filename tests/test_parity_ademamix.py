"""Parity: ademamix against optax.contrib.ademamix and pytorch_optimizer's AdEMAMix, and the paper in NumPy.

Every case runs ``STEPS`` steps of the noisy multi-leaf quadratic of ``tests/peers.py``
(a matrix, a vector and a scalar): float64 must agree to <= 1e-10 (max abs), float32
to <= 1e-5 relative (``peers.max_rel_diff``) with the peer's own float32 run. The
warmups are the special knob: optax takes ``alpha`` and ``b3`` as schedules of its
count (from 0), written here from the paper's ``alpha_scheduler`` / ``b3_scheduler``
(Pagliardini et al., 2025, App. B; computed in the default float dtype where the paper
casts to float32); pytorch_optimizer takes one ``t_alpha_beta3`` and
counts its step from 1. One case per convention runs by default; the grid is slow.
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
LR = 0.02
GAMMA = 0.99  # exponential schedule: lr * GAMMA**t
WD = 0.05
F64_TOLERANCE = 1e-10
F32_TOLERANCE = 1e-5


# -- the peers -----------------------------------------------------------------------------------


def paper_alpha_scheduler(alpha, alpha_start=0.0, warmup=0):
    """The paper's ``alpha_scheduler`` (App. B): linear from ``alpha_start`` to ``alpha`` over ``warmup`` steps."""

    def schedule(step):
        is_warmup = jnp.asarray(step < warmup, dtype=float)  # the paper: float32 (it would cap x64 runs)
        a = step / float(warmup)
        return is_warmup * ((1.0 - a) * alpha_start + a * alpha) + alpha * (1.0 - is_warmup)

    return schedule


def paper_b3_scheduler(beta_end, beta_start=0.0, warmup=0):
    """The paper's ``b3_scheduler`` (App. B): the half-life ``ln(1/2)/ln(b) - 1`` linear in the step."""

    def f(beta):
        return jnp.log(0.5) / jnp.log(beta) - 1

    def f_inv(t):
        return jnp.power(0.5, 1 / (t + 1))

    def schedule(step):
        is_warmup = jnp.asarray(step < warmup, dtype=float)  # the paper: float32 (it would cap x64 runs)
        a = step / float(warmup)
        return is_warmup * f_inv((1.0 - a) * f(beta_start) + a * f(beta_end)) + beta_end * (1.0 - is_warmup)

    return schedule


def optax_ademamix(kwargs: Mapping[str, Any], schedule: bool):
    kwargs = dict(kwargs)
    b1, b3, alpha = kwargs.get("b1", 0.9), kwargs.pop("b3", 0.9999), kwargs.pop("alpha", 5.0)
    alpha_warmup, b3_warmup = kwargs.pop("alpha_warmup", None), kwargs.pop("b3_warmup", None)
    if alpha_warmup is not None:
        alpha = paper_alpha_scheduler(alpha, 0.0, alpha_warmup)
    if b3_warmup is not None:
        b3 = paper_b3_scheduler(b3, b1, b3_warmup)
    weight_decay, decoupled = kwargs.pop("weight_decay", 0.0), kwargs.pop("decoupled", True)
    lr = (lambda count: LR * GAMMA**count) if schedule else LR
    coupled = [] if decoupled else [optax.add_decayed_weights(weight_decay)]
    decayed = weight_decay if decoupled else 0.0
    return optax.chain(*coupled, optax.contrib.ademamix(lr, b3=b3, alpha=alpha, weight_decay=decayed, **kwargs))


def torch_ademamix(kwargs: Mapping[str, Any], problem, dtype, schedule: bool) -> np.ndarray:
    from pytorch_optimizer import AdEMAMix

    kwargs = dict(kwargs)
    betas = (kwargs.pop("b1", 0.9), kwargs.pop("b2", 0.999), kwargs.pop("b3", 0.9999))
    warmups = {kwargs.pop("alpha_warmup", None), kwargs.pop("b3_warmup", None)}
    assert len(warmups) == 1, "pytorch_optimizer has one warmup for alpha and b3"
    kwargs["weight_decouple"] = kwargs.pop("decoupled", False)
    peer = {"lr": LR, "betas": betas, "t_alpha_beta3": warmups.pop(), "foreach": False, **kwargs}
    scheduler = ("exponential", GAMMA) if schedule else None
    return peers.run_torch(AdEMAMix, peer, problem, STEPS, dtype, scheduler=scheduler)


# -- the cases -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    kwargs: Mapping[str, Any]
    schedule: bool = False
    only: tuple[str, ...] = ("optax", "torch")
    fast: bool = False


WARMUPS = {"alpha_warmup": 80, "b3_warmup": 80}
CASES = {
    "defaults": Case({}),
    "hyperparameters": Case({"b1": 0.8, "b2": 0.99, "b3": 0.999, "alpha": 3.0, "eps": 1e-6}),
    "coupled": Case({"weight_decay": WD, "decoupled": False}),
    "decoupled": Case({"weight_decay": WD, "decoupled": True}),
    "schedule": Case({}, schedule=True),
    "warmups": Case({**WARMUPS, "b3": 0.999}),
    "warmups_apart": Case({"alpha_warmup": 50, "b3_warmup": 120, "b3": 0.999}, only=("optax",)),
    "cautious": Case({"cautious": True}, only=("torch",)),
    "cautious-all": Case(
        {**WARMUPS, "b3": 0.999, "weight_decay": WD, "cautious": True}, schedule=True, only=("torch",)
    ),
    "all": Case({**WARMUPS, "b3": 0.999, "weight_decay": WD, "decoupled": True}, schedule=True, fast=True),
}
PARAMS = peers.case_params(CASES, conventions=lambda case: case.only, fast=lambda case: case.fast)


def peer_trajectory(case: Case, convention: str, problem, dtype) -> np.ndarray:
    if convention == "torch":
        return torch_ademamix(case.kwargs, problem, dtype, case.schedule)
    return peers.run_transform(optax_ademamix(case.kwargs, case.schedule), problem, STEPS, dtype)


def ours(case: Case, convention: str):
    lr = (lambda count: LR * GAMMA**count) if case.schedule else LR
    return adamfx.ademamix(lr, convention=convention, **case.kwargs)


@pytest.mark.parametrize("dtype", [np.float64, pytest.param(np.float32, marks=pytest.mark.slow)], ids=["f64", "f32"])
@pytest.mark.parametrize(("name", "convention"), PARAMS)
def test_matches_peer(name, convention, dtype):
    case = CASES[name]
    peer = lambda problem, dtype: peer_trajectory(case, convention, problem, dtype)
    # float32: optax's float32 1 - b3 is off by 3e-4, so the reference may be the peer's float64 run
    peers.check_against_peer(ours(case, convention), peer, STEPS, dtype, f64_tolerance=F64_TOLERANCE)


def test_warmup_indexing_differs_by_one_step_between_conventions():
    """optax's schedules read the count (alpha = 0 at the first step), pytorch_optimizer its step (alpha / T)."""
    params, grads = {"w": jnp.zeros(3)}, {"w": jnp.ones(3)}
    first = {}
    for convention in ("optax", "torch"):
        tx = adamfx.ademamix(1.0, b3=0.99, alpha=4.0, eps=0.0, alpha_warmup=2, b3_warmup=2, convention=convention)
        first[convention] = float(tx.update(grads, tx.init(params), params)[0]["w"][0])
    # m1^ = 1 and v^ = 1; m2 = (1 - b3_t) with b3_t = b1 at s = 0 and exp(ln b1 ln b3 / mean of logs) at s = 1.
    b3_half = math.exp(math.log(0.9) * math.log(0.99) / (0.5 * math.log(0.99) + 0.5 * math.log(0.9)))
    assert first["optax"] == pytest.approx(-1.0, rel=1e-6)
    assert first["torch"] == pytest.approx(-(1.0 + 2.0 * (1 - b3_half)), rel=1e-6)


# -- the paper -----------------------------------------------------------------------------------


def numpy_ademamix(problem, steps, lr, b1, b2, b3, alpha, eps, warmup, dtype=np.float64) -> np.ndarray:
    """Algorithm 1 of Pagliardini et al. (2025) in NumPy, t from 1, the schedulers at t (T_alpha = T_b3 = warmup)."""
    p = problem.params_in(dtype)
    m1, m2, nu = ({k: np.zeros_like(x) for k, x in p.items()} for _ in range(3))
    rows = []
    for t in range(1, steps + 1):
        g = problem.grad(p, t - 1)
        alpha_t = min(t * alpha / warmup, alpha)
        a = t / warmup
        b3_t = min(math.exp(math.log(b1) * math.log(b3) / ((1 - a) * math.log(b3) + a * math.log(b1))), b3)
        for k in p:
            m1[k] = b1 * m1[k] + (1 - b1) * g[k]
            m2[k] = b3_t * m2[k] + (1 - b3_t) * g[k]
            nu[k] = b2 * nu[k] + (1 - b2) * g[k] ** 2
            m1_hat, nu_hat = m1[k] / (1 - b1**t), nu[k] / (1 - b2**t)
            p[k] = p[k] - lr * (m1_hat + alpha_t * m2[k]) / (np.sqrt(nu_hat) + eps)
        rows.append(peers.flatten(p))
    return np.stack(rows)


def test_matches_the_paper_in_numpy():
    problem = peers.make_problem(np.float64)
    kwargs = {"b1": 0.9, "b2": 0.999, "b3": 0.999, "alpha": 5.0, "eps": 1e-8}
    expected = numpy_ademamix(problem, STEPS, LR, warmup=80, **kwargs)
    tx = adamfx.ademamix(LR, **kwargs, alpha_warmup=80, b3_warmup=80, convention="torch")
    actual = peers.run_transform(tx, problem, STEPS, np.float64)
    assert peers.max_abs_diff(actual, expected) <= F64_TOLERANCE


# -- storages and fused --------------------------------------------------------------------------


def _steps(tx, problem, steps, dtype=np.float64):
    return peers.run_transform(tx, problem, steps, dtype)


def test_mu_dtype_stores_both_first_moments():
    """mu_dtype is the storage of m1 and m2 (optax's mu_dtype; it also stores v, which adamfx leaves to nu_dtype)."""
    params = {"w": jnp.zeros((16, 512)), "b": jnp.zeros(3)}  # int8 keeps leaves under 4096 elements in float32
    for spec, dtype in ((jnp.bfloat16, jnp.bfloat16), ("int8", jnp.uint8)):  # int8: 8-bit codes and scales
        state = adamfx.ademamix(mu_dtype=spec, nu_dtype=jnp.bfloat16).init(params)
        moments, slow = state[0], state[2]
        for stored in (moments.mu, slow.m2):
            assert jnp.dtype(dtype) in {leaf.dtype for leaf in jax.tree.leaves(stored)}  # the big leaf
        assert moments.nu["w"].dtype == jnp.bfloat16


STORAGE_PROBLEM = {"w": (16, 32), "b": (32,), "s": ()}
STORAGE_KWARGS = {"alpha_warmup": 50, "b3_warmup": 50, "b3": 0.999}


@pytest.mark.parametrize("spec", [{"mu_dtype": jnp.bfloat16}, {"mu_dtype": "int8"}])
@pytest.mark.slow
def test_low_precision_first_moments_stay_near_the_float32_trajectory(spec):
    problem = peers.make_problem(np.float32, shapes=STORAGE_PROBLEM)
    reference = _steps(adamfx.ademamix(LR, **STORAGE_KWARGS), problem, 150, np.float32)
    low = _steps(adamfx.ademamix(LR, **STORAGE_KWARGS, **spec), problem, 150, np.float32)
    moved = np.max(np.abs(reference[-1] - reference[0]))
    assert moved > 0.5 and peers.max_abs_diff(low, reference) < 0.05 * moved


@pytest.mark.slow
def test_factored_second_moment_converges_like_the_full_one():
    """A factored v is a model of v (the trajectory moves, as Adam's does): it must get as near the optimum."""
    problem = peers.make_problem(np.float32, shapes=STORAGE_PROBLEM)
    target = peers.flatten(problem.target)
    rms = lambda tx: np.sqrt(np.mean((_steps(tx, problem, 150, np.float32)[-1] - target) ** 2))
    full, factored = (
        rms(adamfx.ademamix(LR, **STORAGE_KWARGS)),
        rms(adamfx.ademamix(LR, **STORAGE_KWARGS, nu_dtype="factored")),
    )
    start = np.sqrt(np.mean((peers.flatten(problem.init_params) - target) ** 2))
    assert full < 0.8 * start and factored < 1.25 * full


@pytest.mark.slow
def test_fused_equals_unfused():
    problem = peers.make_problem(np.float64, shapes={"w": (3, 4), "b": (4,), "s": (), "big": (70, 70)})
    mask = {"w": True, "b": False, "s": False, "big": True}
    tx = adamfx.ademamix(LR, weight_decay=WD, weight_decay_mask=mask, alpha_warmup=20, b3_warmup=30, convention="torch")
    assert peers.max_abs_diff(_steps(adamfx.fused(tx), problem, 60), _steps(tx, problem, 60)) <= 1e-14
    with pytest.raises(ValueError, match="not elementwise"):
        adamfx.fused(adamfx.ademamix(nu_dtype="factored"))


@pytest.mark.slow
def test_cautious_masks_only_the_fast_ema_and_is_not_fused():
    """cautious=True changes the trajectory (pytorch_optimizer's mask on m1^; parity in test_matches_peer), keeps
    the slow EMA unmasked, and cannot run fused (its d / (nnz + 1) is a per-leaf count)."""
    problem = peers.make_problem(np.float64)
    plain, masked = (_steps(adamfx.ademamix(LR, cautious=c, convention="torch"), problem, 60) for c in (False, True))
    assert peers.max_abs_diff(plain, masked) > 1e-3
    params, grads = {"w": jnp.zeros(2)}, {"w": jnp.asarray([1.0, -1.0])}
    tx = adamfx.ademamix(1.0, b3=0.5, alpha=1.0, eps=0.0, cautious=True)
    state = tx.init(params)
    _, state = tx.update(grads, state, params)  # m1 = 0.1 g, m2 = 0.5 g
    updates, _ = tx.update({"w": jnp.asarray([1.0, 1.0])}, state, params)  # m1 = (0.19, 0.01), m2 = (0.75, 0.25)
    m1_hat, v_hat = np.array([0.19, 0.01]) / 0.19, 1.0  # both kept (m1 g > 0): scale 2 / (2 + 1)
    expected = -(m1_hat * 2 / 3 + np.array([0.75, 0.25])) / np.sqrt(v_hat)
    np.testing.assert_allclose(updates["w"], expected, rtol=1e-5)
    with pytest.raises(ValueError, match="not elementwise"):
        adamfx.fused(tx)
