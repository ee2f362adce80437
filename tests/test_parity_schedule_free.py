"""Parity: schedule_free_adamw / schedule_free_sgd against the live peers, train iterate y *and* eval iterate x.

Peers: optax.contrib.schedule_free_adamw/sgd (x from ``optax.contrib.schedule_free_eval_params``),
schedulefree 1.4.1 ``AdamWScheduleFree``/``SGDScheduleFree`` (x from ``optimizer.eval()``, then
``train()`` again) and Keras 3 ``ScheduleFreeAdamW`` (x rebuilt from its ``momentum`` variable,
which is z, by Keras's own ``x = (y - (1 - beta_1) z) / beta_1``; Keras has no eval mode). Ours: the
params and :func:`adamfx.schedule_free_eval_params`. Every case runs ``STEPS`` steps of the noisy
multi-leaf quadratic of ``tests/peers.py`` (a matrix, a vector, a scalar): float64 within 1e-10 (max abs),
float32 within 1e-5 (relative).

optax's warmup is float32 even under x64 (``warmup_constant_schedule`` divides the int32 count:
``int32 / int`` is float32 in JAX), so it cannot run a warmup in float64. The warmup cases therefore
use a learning rate and warmup length that are powers of two (``LR = 2**-6``, ``W = 16``): every
``lr min(n, W) / W`` is then exact in float32, and optax's float64 run is exact arithmetic again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamfx
from tests import peers

STEPS = 200
LR, W = 2.0**-6, 16  # exact in float32: see the module docstring
SGD_LR = 2.0**-3
GAMMA = 0.99  # exponential schedule lr * GAMMA**(t - 1)
F64, F32 = 1e-10, 1e-5

PROBLEM = peers.make_problem()
KEYS = sorted(PROBLEM.init_params)


@dataclasses.dataclass(frozen=True)
class Case:
    kwargs: dict  # adamfx arguments (the peers' spellings follow)
    schedule: bool = False  # learning_rate * GAMMA**(t - 1) on top


ADAMW_CASES = {
    "all": Case(
        {
            "learning_rate": LR,
            "warmup_steps": W,
            "b1": 0.8,
            "b2": 0.99,
            "eps": 1e-6,
            "weight_decay": 0.05,
            "weight_lr_power": 1.5,
        }
    ),
    "defaults": Case({}),
    "warmup": Case({"learning_rate": LR, "warmup_steps": W}),
    "weight_decay": Case({"learning_rate": LR, "weight_decay": 0.1}),
    "weight_lr_power": Case({"learning_rate": LR, "warmup_steps": W, "weight_lr_power": 0.5}),
    "schedule": Case({"learning_rate": 0.01, "weight_decay": 0.05, "weight_lr_power": 1.5}, schedule=True),
}
SGD_CASES = {
    "all": Case({"learning_rate": SGD_LR, "warmup_steps": W, "b1": 0.8, "weight_decay": 0.05, "weight_lr_power": 1.5}),
    "defaults": Case({"learning_rate": SGD_LR}),  # lr 1.0 diverges on this problem
    "warmup": Case({"learning_rate": SGD_LR, "warmup_steps": W}),
    "schedule": Case({"learning_rate": SGD_LR, "weight_decay": 0.05, "weight_lr_power": 3.0}, schedule=True),
}


def _schedule(lr):
    return lambda count: lr * GAMMA**count


Trajectories = tuple[np.ndarray, np.ndarray]  # (y, x), each (steps, n_params)


def run_ours(tx, dtype=np.float64, steps=STEPS, problem=PROBLEM) -> Trajectories:
    with peers.precision(dtype):

        @jax.jit
        def step(params, state, grads):
            updates, state = tx.update(grads, state, params)
            params = optax.apply_updates(params, updates)
            return params, state, adamfx.schedule_free_eval_params(state, params)

        params = {k: jnp.asarray(v) for k, v in problem.params_in(dtype).items()}
        state = tx.init(params)
        ys, xs = [], []
        for i in range(steps):
            params, state, x = step(params, state, problem.grad(params, i))
            ys.append(peers.flatten(params))
            xs.append(peers.flatten(x))
    return np.stack(ys), np.stack(xs)


def run_optax(tx, dtype=np.float64) -> Trajectories:
    with peers.precision(dtype):

        @jax.jit
        def step(params, state, grads):
            updates, state = tx.update(grads, state, params)
            params = optax.apply_updates(params, updates)
            return params, state, optax.contrib.schedule_free_eval_params(state, params)

        params = {k: jnp.asarray(v) for k, v in PROBLEM.params_in(dtype).items()}
        state = tx.init(params)
        ys, xs = [], []
        for i in range(STEPS):
            params, state, x = step(params, state, PROBLEM.grad(params, i))
            ys.append(peers.flatten(params))
            xs.append(peers.flatten(x))
    return np.stack(ys), np.stack(xs)


def run_torch(cls_name: str, kwargs: dict, dtype=np.float64, schedule: bool = False) -> Trajectories:
    import schedulefree
    import torch

    old_default = torch.get_default_dtype()  # scalar state in the run's dtype
    torch.set_default_dtype(torch.float64 if np.dtype(dtype) == np.float64 else torch.float32)
    try:
        tensors = {k: torch.tensor(v, requires_grad=True) for k, v in PROBLEM.params_in(dtype).items()}
        opt = getattr(schedulefree, cls_name)([tensors[k] for k in KEYS], **kwargs)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: GAMMA**k) if schedule else None
        opt.train()

        def now():
            return peers.flatten({k: t.detach().numpy().copy() for k, t in tensors.items()})

        ys, xs = [], []
        for i in range(STEPS):
            grads = PROBLEM.grad({k: t.detach().numpy() for k, t in tensors.items()}, i)
            for k in KEYS:
                tensors[k].grad = torch.from_numpy(grads[k].copy())
            opt.step()
            if sched is not None:
                sched.step()
            ys.append(now())
            opt.eval()  # p <- x
            xs.append(now())
            opt.train()  # p <- y
    finally:
        torch.set_default_dtype(old_default)
    return np.stack(ys), np.stack(xs)


def run_keras(kwargs: dict, dtype=np.float64, schedule: bool = False) -> Trajectories:
    import keras  # peers set KERAS_BACKEND=jax before any import of keras

    b1 = kwargs.get("beta_1", 0.9)
    with peers.precision(dtype, keras_floatx=True):
        kwargs = dict(kwargs)
        if schedule:
            kwargs["learning_rate"] = keras.optimizers.schedules.ExponentialDecay(
                kwargs["learning_rate"], decay_steps=1, decay_rate=GAMMA
            )
        opt = keras.optimizers.ScheduleFreeAdamW(**kwargs)
        init = PROBLEM.params_in(dtype)
        variables = [keras.Variable(init[k], dtype=np.dtype(dtype).name, name=k) for k in KEYS]
        opt.build(variables)
        z_index = [i for i, v in enumerate(opt.variables) if "momentum" in v.path]
        assert len(z_index) == len(KEYS)
        apply = jax.jit(lambda state, grads: opt.stateless_apply(state[1], grads, state[0]))
        state = ([v.value for v in variables], [v.value for v in opt.variables])
        ys, xs = [], []
        for i in range(STEPS):
            grads = PROBLEM.grad(dict(zip(KEYS, state[0], strict=True)), i)
            state = apply(state, [grads[k] for k in KEYS])
            y = [np.asarray(v) for v in state[0]]
            z = [np.asarray(state[1][j]) for j in z_index]
            ys.append(peers.flatten(dict(zip(KEYS, y, strict=True))))
            xs.append(peers.flatten({k: (yk - (1 - b1) * zk) / b1 for k, yk, zk in zip(KEYS, y, z, strict=True)}))
    return np.stack(ys), np.stack(xs)


# ---- the peers' spellings --------------------------------------------------------------------------------------


def _torch_kwargs(kwargs: dict, sgd: bool) -> dict:
    names = {"learning_rate": "lr"}
    out = {names.get(k, k): v for k, v in kwargs.items() if k not in ("b1", "b2")}
    if sgd and "b1" in kwargs:
        out["momentum"] = kwargs["b1"]
    if not sgd and ("b1" in kwargs or "b2" in kwargs):
        out["betas"] = (kwargs.get("b1", 0.9), kwargs.get("b2", 0.999))
    return out


def _keras_kwargs(kwargs: dict) -> dict:
    names = {"b1": "beta_1", "b2": "beta_2", "eps": "epsilon"}
    assert "weight_lr_power" not in kwargs, "Keras has no weight_lr_power"
    return {names.get(k, k): v for k, v in kwargs.items()}


def peer(family: str, convention: str, case: Case, dtype=np.float64) -> Trajectories:
    sgd = family == "sgd"
    if convention == "torch":
        cls = "SGDScheduleFree" if sgd else "AdamWScheduleFree"
        return run_torch(cls, _torch_kwargs(case.kwargs, sgd), dtype, case.schedule)
    if convention == "keras":
        return run_keras(_keras_kwargs(case.kwargs), dtype, case.schedule)
    factory = optax.contrib.schedule_free_sgd if sgd else optax.contrib.schedule_free_adamw
    kwargs = dict(case.kwargs)
    if case.schedule:  # optax reads a schedule for the z step at t - 1 and for the weights at t
        kwargs["learning_rate"] = _schedule(kwargs["learning_rate"])
    return run_optax(factory(**kwargs), dtype)


def ours(family: str, convention: str, case: Case, dtype=np.float64) -> Trajectories:
    factory = adamfx.schedule_free_sgd if family == "sgd" else adamfx.schedule_free_adamw
    kwargs = dict(case.kwargs)
    if case.schedule:
        kwargs["learning_rate"] = _schedule(kwargs["learning_rate"])
    return run_ours(factory(**kwargs, convention=convention), dtype)


def _keras_case(case: Case) -> Case:
    """Keras has no weight_lr_power (its c_t is 1/t): drop it from the case."""
    return Case({k: v for k, v in case.kwargs.items() if k != "weight_lr_power"}, case.schedule)


def _params():
    slow = pytest.mark.slow
    for family, cases, conventions in (
        ("adamw", ADAMW_CASES, ("optax", "torch", "keras")),
        ("sgd", SGD_CASES, ("optax", "torch")),
    ):
        for name, case in cases.items():
            for convention in conventions:
                if convention == "optax" and case.schedule and "warmup_steps" in case.kwargs:
                    continue  # optax's warmup cannot wrap a schedule
                chosen = _keras_case(case) if convention == "keras" else case
                marks = () if name == "all" else (slow,)
                yield pytest.param(family, convention, chosen, id=f"{family}-{convention}-{name}", marks=marks)


@pytest.mark.parametrize(("family", "convention", "case"), list(_params()))
def test_float64_train_and_eval_iterates_match_the_peer(family, convention, case):
    (y, x), (peer_y, peer_x) = ours(family, convention, case), peer(family, convention, case)
    assert y.dtype == np.float64
    assert peers.max_abs_diff(y, peer_y) <= F64
    assert peers.max_abs_diff(x, peer_x) <= F64
    assert peers.max_abs_diff(x, y) > 1e-3  # x and y really are different sequences


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "convention"), [("adamw", "optax"), ("adamw", "torch"), ("adamw", "keras"), ("sgd", "torch")]
)
def test_float32_matches_the_peer(family, convention):
    case = (SGD_CASES if family == "sgd" else ADAMW_CASES)["all"]
    case = _keras_case(case) if convention == "keras" else case
    (y, x), (peer_y, peer_x) = ours(family, convention, case, np.float32), peer(family, convention, case, np.float32)
    assert y.dtype == np.float32
    assert peers.max_rel_diff(y, peer_y) <= F32
    assert peers.max_rel_diff(x, peer_x) <= F32


@pytest.mark.slow
def test_the_conventions_really_differ():
    """The same arguments give visibly different trajectories in each convention (the table is not decoration)."""
    case = _keras_case(ADAMW_CASES["all"])
    factory = adamfx.schedule_free_adamw
    runs = {c: run_ours(factory(**case.kwargs, convention=c), steps=40)[0] for c in ("optax", "torch", "keras")}
    assert peers.max_abs_diff(runs["optax"], runs["torch"]) > 1e-4
    assert peers.max_abs_diff(runs["torch"], runs["keras"]) > 1e-4


# ---- the paper's algorithm in NumPy ------------------------------------------------------------------------------


def numpy_schedule_free(lr, warmup, b1, b2, eps, wd, power, steps=STEPS, adam=True) -> Trajectories:
    """Defazio et al. (2024), Alg. 1 (Schedule-Free AdamW), with x, y and z all kept, as written there.

    As in schedulefree >= 1.3, the bias correction sits in v (the paper: in gamma_t, see the docstring
    of :func:`adamfx.schedule_free_adamw`). ``adam=False`` is Schedule-Free SGD (d = g + wd y).
    """
    x = PROBLEM.params_in(np.float64)
    z = {k: v.copy() for k, v in x.items()}
    v = {k: np.zeros_like(p) for k, p in x.items()}
    lr_max = weight_sum = 0.0
    ys, xs = [], []
    for t in range(1, steps + 1):
        y = {k: (1 - b1) * z[k] + b1 * x[k] for k in x}
        g = PROBLEM.grad(y, t - 1)
        gamma = lr * min(1.0, t / warmup)
        lr_max = max(lr_max, gamma)
        weight_sum += lr_max**power
        c = lr_max**power / weight_sum
        for k in x:
            if adam:
                v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
                d = g[k] / (np.sqrt(v[k] / (1 - b2**t)) + eps) + wd * y[k]
            else:
                d = g[k] + wd * y[k]
            z[k] = z[k] - gamma * d
            x[k] = (1 - c) * x[k] + c * z[k]
        ys.append(peers.flatten({k: (1 - b1) * z[k] + b1 * x[k] for k in x}))
        xs.append(peers.flatten(x))
    return np.stack(ys), np.stack(xs)


@pytest.mark.parametrize("family", ["adamw", pytest.param("sgd", marks=pytest.mark.slow)])
def test_matches_the_papers_algorithm_in_numpy(family):
    adam = family == "adamw"
    lr = LR if adam else SGD_LR
    expected = numpy_schedule_free(lr, W, 0.8, 0.99, 1e-6, 0.05, 1.5, steps=150, adam=adam)
    factory: Callable[..., Any] = adamfx.schedule_free_adamw if adam else adamfx.schedule_free_sgd
    kwargs = {"b2": 0.99, "eps": 1e-6} if adam else {}
    tx = factory(lr, W, b1=0.8, weight_decay=0.05, weight_lr_power=1.5, convention="torch", **kwargs)
    y, x = run_ours(tx, steps=150)
    assert peers.max_abs_diff(y, expected[0]) <= F64
    assert peers.max_abs_diff(x, expected[1]) <= F64
