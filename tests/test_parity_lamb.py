"""LAMB against the live peers (optax.lamb, keras.optimizers.Lamb) and the paper's Algorithm 2 in NumPy.

150 jitted steps of the noisy multi-leaf quadratic of ``tests/peers.py`` (matrix, vector, scalar): float64
within 1e-10 (max abs), float32 within 1e-5 relative of the peer's float32 run (both peers compute in the
run's dtype: ``peers.keras_f32_ops("Lamb")`` is empty). The peers differ in where the weight decay goes:
optax adds it to the update before the trust ratio; Keras decays the weights first and takes ``||p||`` of
the decayed weights, outside the ratio. Zero norms (a zero parameter leaf, a zero update) give ratio 1 in both.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamfx
from tests import peers

STEPS = 150
LR = 0.02
GAMMA = 0.99


@dataclasses.dataclass(frozen=True)
class Case:
    lr: float | None = LR  # None: the signature's 1e-3 (Keras's default; optax has none)
    b1: float = 0.9
    b2: float = 0.999
    eps: float | None = None  # None: each convention's default (optax 1e-6, Keras 1e-7)
    weight_decay: float = 0.0
    schedule: bool = False
    zero_leaf: bool = False  # the vector starts at 0: ||p|| = 0, ratio 1 at the first step


CASES = {
    "defaults": Case(lr=None),
    "hyperparams": Case(b1=0.8, b2=0.99, eps=1e-5),
    "weight_decay": Case(weight_decay=0.1),
    "schedule": Case(weight_decay=0.1, schedule=True),
    "zero_leaf": Case(weight_decay=0.1, zero_leaf=True),
}
DEFAULT = {("zero_leaf", np.float64), ("defaults", np.float32)}  # per convention by default; the rest in CI
EPS = {"optax": 1e-6, "keras": 1e-7}


def problem_of(case: Case, dtype):
    problem = peers.make_problem(dtype)
    if not case.zero_leaf:
        return problem
    return dataclasses.replace(problem, init_params={**problem.init_params, "b": np.zeros(4, dtype)})


def schedule(lr: float):
    return lambda count: lr * GAMMA**count  # optax.exponential_decay would compute in float32


def ours(case: Case, convention: str):
    lr = 1e-3 if case.lr is None else case.lr
    lr = schedule(lr) if case.schedule else lr
    kwargs: dict[str, Any] = {"weight_decay": case.weight_decay, "convention": convention}
    return adamfx.lamb(lr, case.b1, case.b2, case.eps, **kwargs)


def optax_peer(case: Case, problem, dtype):
    lr = 1e-3 if case.lr is None else case.lr
    lr = schedule(lr) if case.schedule else lr
    eps = EPS["optax"] if case.eps is None else case.eps
    tx = optax.lamb(lr, case.b1, case.b2, eps, weight_decay=case.weight_decay)
    return peers.run_transform(tx, problem, STEPS, dtype)


def keras_peer(case: Case, problem, dtype):
    kwargs: dict[str, Any] = {"beta_1": case.b1, "beta_2": case.b2}
    kwargs.update({} if case.lr is None else {"learning_rate": case.lr})
    kwargs.update({} if case.eps is None else {"epsilon": case.eps})
    kwargs.update({"weight_decay": case.weight_decay} if case.weight_decay else {})
    schedule_spec = ("exponential", GAMMA) if case.schedule else None
    return peers.run_keras("Lamb", kwargs, problem, STEPS, dtype, schedule=schedule_spec)


PEERS = {"optax": optax_peer, "keras": keras_peer}


@pytest.mark.parametrize(
    ("name", "convention", "dtype"), peers.grid_params(CASES, PEERS, lambda *case: case in DEFAULT)
)
def test_matches_peer(name, convention, dtype):
    case = CASES[name]
    problem = problem_of(case, dtype)
    expected = PEERS[convention](case, problem, dtype)
    actual = peers.run_transform(ours(case, convention), problem, STEPS, dtype)
    if np.dtype(dtype) == np.float64:
        assert peers.max_abs_diff(actual, expected) <= 1e-10
    else:
        assert peers.max_rel_diff(actual, expected) <= 1e-5


@pytest.mark.slow
def test_conventions_differ_with_weight_decay():
    problem = peers.make_problem()
    runs = [peers.run_transform(ours(CASES["weight_decay"], c), problem, 30) for c in PEERS]
    assert peers.max_abs_diff(*runs) > 1e-6  # weight decay inside vs outside the ratio


def numpy_lamb(problem, steps, lr, b1, b2, eps, wd) -> np.ndarray:
    """LAMB, Algorithm 2 of You et al. (2020) with phi(z) = z, in NumPy (float64); ratio 1 at a zero norm."""
    x = problem.params_in(np.float64)
    m = {k: np.zeros_like(v) for k, v in x.items()}
    v = {k: np.zeros_like(p) for k, p in x.items()}
    rows = []
    for t in range(1, steps + 1):
        g = problem.grad(x, t - 1)
        for k in x:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            r = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
            step = r + wd * x[k]
            x_norm, step_norm = np.linalg.norm(x[k]), np.linalg.norm(step)
            ratio = x_norm / step_norm if x_norm > 0 and step_norm > 0 else 1.0
            x[k] = x[k] - lr * ratio * step
        rows.append(peers.flatten(x))
    return np.stack(rows)


def test_matches_paper():
    case = CASES["zero_leaf"]
    problem = problem_of(case, np.float64)
    expected = numpy_lamb(problem, STEPS, LR, 0.9, 0.999, 1e-6, 0.1)
    actual = peers.run_transform(ours(case, "optax"), problem, STEPS)
    assert peers.max_abs_diff(actual, expected) <= 1e-10


@pytest.mark.parametrize("convention", ["optax", pytest.param("keras", marks=pytest.mark.slow)])
def test_zero_update_keeps_ratio_one(convention):
    """A leaf whose gradient is 0 gets a zero Adam update: ||u|| = 0, ratio 1 (no NaN), as optax does."""
    params = {"w": jnp.ones(3), "z": jnp.ones(2)}
    tx = adamfx.lamb(0.1, convention=convention)
    grads = {"w": jnp.array([1.0, -2.0, 3.0]), "z": jnp.zeros(2)}
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(updates["z"], 0.0)
    expected, _ = optax.lamb(0.1).update(grads, optax.lamb(0.1).init(params), params)
    np.testing.assert_allclose(updates["w"], expected["w"], rtol=1e-6)


def test_fused_rejects_trust_ratio():
    with pytest.raises(ValueError, match="TrustRatio needs per-leaf shapes"):
        adamfx.fused(adamfx.lamb())
    with pytest.raises(ValueError, match="TrustRatio needs per-leaf shapes"):
        adamfx.fused(adamfx.lamb(weight_decay=0.1, convention="keras"))


def test_keras_learning_rate_is_one_hyperparameter():
    """Keras's form keeps a second copy of lr (for ||p - lr wd p||): set_hyperparams changes both."""
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    grads = {"w": jnp.array([0.5, 0.5, -1.0])}
    tx = adamfx.lamb(0.1, weight_decay=0.5, convention="keras")
    state = adamfx.set_hyperparams(tx.init(params), learning_rate=0.3)
    assert float(adamfx.hyperparams(state)["learning_rate"]) == pytest.approx(0.3)
    moved, _ = tx.update(grads, state, params)
    rebuilt = adamfx.lamb(0.3, weight_decay=0.5, convention="keras")
    expected, _ = rebuilt.update(grads, rebuilt.init(params), params)
    np.testing.assert_allclose(moved["w"], expected["w"], rtol=1e-6)
    assert tx == adamfx.lamb(0.1, weight_decay=0.5, convention="keras")


def test_unknown_convention():
    with pytest.raises(ValueError, match="'optax', 'keras'"):
        adamfx.lamb(convention="torch")


@pytest.mark.parametrize(
    ("mu_dtype", "nu_dtype"),
    [("int8", "int8"), pytest.param(jnp.bfloat16, jnp.bfloat16, marks=pytest.mark.slow), (None, "factored")],
)
def test_storages(mu_dtype, nu_dtype):
    params = {"w": jnp.ones((32, 64))}
    tx = adamfx.lamb(1e-2, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    g = {"w": jnp.sin(jnp.arange(32 * 64.0)).reshape(32, 64)}
    updates, _ = jax.jit(tx.update)(g, tx.init(params), params)
    # the trust ratio sets ||u|| = lr ||p||, whatever the storage of the moments
    assert float(jnp.linalg.norm(updates["w"])) == pytest.approx(1e-2 * float(jnp.linalg.norm(params["w"])), 1e-3)
