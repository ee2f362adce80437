"""Lion against the live peers: optax.lion, keras.optimizers.Lion, lion-pytorch 0.2.5 (and its cautious Lion).

Every case runs 150 jitted steps of the noisy multi-leaf quadratic of ``tests/peers.py`` (a matrix, a
vector and a scalar): float64 within 1e-10 (max abs), float32 within 1e-5 relative of the peer's float32 run.
``cautious=True`` is compared with lion-pytorch's ``cautious_lion.Lion(cautious_factor=0)`` ("torch") and
with pytorch-optimizer 4.1.0's ``Lion(cautious=True)`` (the paper's rescale, which "optax" and "keras" use:
neither has a cautious Lion). Plus the paper's Program 1 in NumPy, the storages of the single moment
(bfloat16, int8) and ``fused``.
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
from adamfx._src.storage.protocol import stored_records
from tests import peers

STEPS = 150
LR = 0.01
GAMMA = 0.99  # exponential schedule: lr * GAMMA**t
F64_TOLERANCE = 1e-10
F32_TOLERANCE = 1e-5


@dataclasses.dataclass(frozen=True)
class Case:
    """One recipe; ``None`` leaves the argument to the convention's (and the peer's) default."""

    lr: float | None = LR
    b1: float = 0.9
    b2: float = 0.99
    weight_decay: float | None = 0.0
    schedule: bool = False
    cautious: bool = False


CASES = {
    "defaults": Case(lr=None, weight_decay=None),
    "hyperparams": Case(b1=0.8, b2=0.95),
    "weight_decay": Case(weight_decay=0.3),
    "schedule": Case(weight_decay=0.1, schedule=True),
    "cautious": Case(cautious=True),
    "cautious_all": Case(b1=0.8, b2=0.95, weight_decay=0.3, schedule=True, cautious=True),
}
DEFAULT = {("cautious_all", np.float64), ("defaults", np.float32)}  # per convention by default; the rest in CI


def schedule(lr: float):
    """lr GAMMA^t in the run's precision (optax.exponential_decay computes in float32 even under x64)."""
    return lambda count: lr * GAMMA**count


def ours(case: Case, convention: str):
    lr = schedule(case.lr) if case.schedule else case.lr
    kwargs: dict[str, Any] = {"b1": case.b1, "b2": case.b2, "cautious": case.cautious, "convention": convention}
    return adamfx.lion(lr, weight_decay=case.weight_decay, **kwargs)


def optax_peer(case: Case, problem, dtype):
    if case.cautious:  # no cautious Lion in optax: pytorch-optimizer's, with the paper's rescale
        return pytorch_optimizer_peer(case, problem, dtype, default_lr=1e-4, default_wd=1e-3)
    lr = 1e-4 if case.lr is None else case.lr  # optax.lion has no default learning rate
    lr = schedule(lr) if case.schedule else lr
    wd = {} if case.weight_decay is None else {"weight_decay": case.weight_decay}
    return peers.run_transform(optax.lion(lr, case.b1, case.b2, **wd), problem, STEPS, dtype)


def keras_peer(case: Case, problem, dtype):
    if case.cautious:  # no cautious Lion in Keras: pytorch-optimizer's
        return pytorch_optimizer_peer(case, problem, dtype, default_lr=1e-3, default_wd=0.0)
    kwargs: dict[str, Any] = {"beta_1": case.b1, "beta_2": case.b2}
    if case.lr is not None:
        kwargs["learning_rate"] = case.lr
    if case.weight_decay:
        kwargs["weight_decay"] = case.weight_decay
    schedule = ("exponential", GAMMA) if case.schedule else None
    return peers.run_keras("Lion", kwargs, problem, STEPS, dtype, schedule=schedule)


def _torch_kwargs(case: Case, default_lr: float | None = None, default_wd: float | None = None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"betas": (case.b1, case.b2)}
    lr, wd = (case.lr or default_lr), (default_wd if case.weight_decay is None else case.weight_decay)
    kwargs.update({} if lr is None else {"lr": lr})
    kwargs.update({} if wd is None else {"weight_decay": wd})
    return kwargs


def _scheduler(case: Case):
    return ("lambda", lambda t: GAMMA**t) if case.schedule else None


def torch_peer(case: Case, problem, dtype):
    from lion_pytorch import Lion
    from lion_pytorch.cautious_lion import Lion as CautiousLion

    kwargs = _torch_kwargs(case)
    if case.cautious:
        kwargs = {"cautious_factor": 0.0, **kwargs}
    return peers.run_torch(CautiousLion if case.cautious else Lion, kwargs, problem, STEPS, dtype, _scheduler(case))


def pytorch_optimizer_peer(case: Case, problem, dtype, default_lr: float, default_wd: float):
    from pytorch_optimizer import Lion

    kwargs = {"cautious": True, **_torch_kwargs(case, default_lr, default_wd)}
    return peers.run_torch(Lion, kwargs, problem, STEPS, dtype, scheduler=_scheduler(case))


PEERS = {"optax": optax_peer, "keras": keras_peer, "torch": torch_peer}


@pytest.mark.parametrize(
    ("name", "convention", "dtype"), peers.grid_params(CASES, PEERS, lambda *case: case in DEFAULT)
)
def test_matches_peer(name, convention, dtype):
    case = CASES[name]
    problem = peers.make_problem(dtype)
    expected = PEERS[convention](case, problem, dtype)
    actual = peers.run_transform(ours(case, convention), problem, STEPS, dtype)
    if np.dtype(dtype) == np.float64:
        assert peers.max_abs_diff(actual, expected) <= F64_TOLERANCE
    else:
        assert peers.max_rel_diff(actual, expected) <= F32_TOLERANCE


@pytest.mark.slow
def test_cautious_rescales_differ_by_convention():
    """lion-pytorch and the paper rescale differently: the "torch" and "optax" cautious runs must differ."""
    problem = peers.make_problem()
    case = Case(cautious=True)
    torch_run = peers.run_transform(ours(case, "torch"), problem, 20)
    optax_run = peers.run_transform(ours(case, "optax"), problem, 20)
    assert peers.max_abs_diff(torch_run, optax_run) > 1e-4


def numpy_lion(problem, steps, lr, b1, b2, wd) -> np.ndarray:
    """Program 1 of Chen et al. (2023), in NumPy (float64)."""
    w = problem.params_in(np.float64)
    m = {k: np.zeros_like(x) for k, x in w.items()}
    rows = []
    for t in range(steps):
        g = problem.grad(w, t)
        for k in w:
            update = np.sign(b1 * m[k] + (1 - b1) * g[k])  # interp(grad, m, beta1), then sign
            m[k] = b2 * m[k] + (1 - b2) * g[k]  # interp(grad, m, beta2)
            w[k] = w[k] - lr * (update + wd * w[k])
        rows.append(peers.flatten(w))
    return np.stack(rows)


SLOW_CONVENTIONS = [pytest.param(c, marks=pytest.mark.slow) for c in ("keras", "torch")]


@pytest.mark.parametrize("convention", ["optax", *SLOW_CONVENTIONS])
def test_matches_paper(convention):
    problem = peers.make_problem()
    expected = numpy_lion(problem, STEPS, LR, 0.8, 0.95, 0.3)
    actual = peers.run_transform(adamfx.lion(LR, 0.8, 0.95, weight_decay=0.3, convention=convention), problem, STEPS)
    assert peers.max_abs_diff(actual, expected) <= F64_TOLERANCE


# ---------------------------------------------------------------- storage of the single moment


def _gradients(steps: int, shape=(64, 96)):
    rng = np.random.default_rng(3)
    return [{"w": jnp.asarray(rng.standard_normal(shape), jnp.float32)} for _ in range(steps)]


@pytest.mark.parametrize("mu_dtype", [jnp.bfloat16, "int8"])
def test_low_bit_moment(mu_dtype):
    """|update| stays lr (a sign) and the run follows the float32 one over a few steps."""
    steps, lr, wd = 8, 1e-2, 0.1
    params = {"w": jnp.ones((64, 96))}
    low, full = adamfx.lion(lr, weight_decay=wd, mu_dtype=mu_dtype), adamfx.lion(lr, weight_decay=wd)
    s_low, s_full = low.init(params), full.init(params)
    stored_bytes = {leaf.dtype.itemsize for leaf in jax.tree.leaves(s_low[0].mu)}
    assert (2 if mu_dtype is jnp.bfloat16 else 1) in stored_bytes  # bf16, or int8 codes (+ float32 block scales)
    agree = []
    for step, g in enumerate(_gradients(steps)):
        u_low, s_low = jax.jit(low.update)(g, s_low, params)
        u_full, s_full = jax.jit(full.update)(g, s_full, params)
        sign_part = np.asarray(u_low["w"]) / -lr - wd * np.asarray(params["w"])
        np.testing.assert_allclose(np.abs(sign_part), 1.0, rtol=1e-5)  # |u| = lr |sign + wd p|: bounded
        if step == 0:  # m_0 = 0: c_1 = (1 - b1) g_1, the same in any storage
            np.testing.assert_array_equal(u_low["w"], u_full["w"])
        agree.append(np.mean(np.asarray(u_low["w"]) == np.asarray(u_full["w"])))
    assert min(agree) >= 0.97, agree  # a narrow m flips the sign only where c_t is near 0


def _decoded_mu(tx, state):
    """The stored momentum as float32, read through the storage."""
    storage = tx.init.stage.stages[0].storage  # the chain's first stage: lion_momentum
    records = stored_records(storage, state[0].mu, jax.tree.structure({"w": 0}))
    return storage.decode(records[0], dtype=jnp.float32)


@pytest.mark.parametrize(("mu_dtype", "mantissa_bits"), [(jnp.bfloat16, 7), ("int8", 3)])
def test_low_bit_moment_tracks_float32(mu_dtype, mantissa_bits):
    """The stored m stays within the random walk of its unbiased roundings of the float32 m.

    Each step rounds m stochastically to a grid of relative spacing 2^-M (bfloat16: M = 7; int8's E4M3
    code: M = 3), an error of RMS at most half a spacing; over n steps they add up to ~sqrt(n) of them.
    """
    steps = 10
    params = {"w": jnp.zeros((64, 96))}
    low, full = adamfx.lion(1e-3, mu_dtype=mu_dtype), adamfx.lion(1e-3)
    s_low, s_full = low.init(params), full.init(params)
    tolerance = np.sqrt(steps) * 2.0**-mantissa_bits / 2
    for g in _gradients(steps):
        _, s_low = jax.jit(low.update)(g, s_low, params)
        _, s_full = jax.jit(full.update)(g, s_full, params)
    m_low, m_full = _decoded_mu(low, s_low), s_full[0].mu["w"]
    error = float(jnp.linalg.norm(m_low - m_full) / jnp.linalg.norm(m_full))
    assert 0 < error <= tolerance, error


# ---------------------------------------------------------------- fused, hyperparameters


def test_fused_matches_unfused():
    params = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4), "s": jnp.asarray(0.5)}
    tx = adamfx.lion(1e-2, weight_decay=0.1)
    fused = adamfx.fused(tx)
    s1, s2 = tx.init(params), fused.init(params)
    for step in range(5):
        g = jax.tree.map(lambda p: jnp.cos(p + step), params)
        u1, s1 = jax.jit(tx.update)(g, s1, params)
        u2, s2 = jax.jit(fused.update)(g, s2, params)
        jax.tree.map(np.testing.assert_array_equal, u1, u2)


def test_fused_rejects_cautious():
    with pytest.raises(ValueError, match="Cautious needs per-leaf shapes"):
        adamfx.fused(adamfx.lion(cautious=True))


def test_set_hyperparams_and_equality():
    assert adamfx.lion(1e-3, convention="torch") == adamfx.lion(1e-3, convention="torch")
    params = {"w": jnp.ones(3)}
    tx = adamfx.lion(1e-3, weight_decay=0.1)
    state = adamfx.set_hyperparams(tx.init(params), b1=0.5, learning_rate=2e-3)
    values = adamfx.hyperparams(state)
    assert float(values["b1"]) == pytest.approx(0.5)
    assert float(values["learning_rate"]) == pytest.approx(2e-3)


@pytest.mark.parametrize("cautious", [pytest.param(False, marks=pytest.mark.slow), True])
def test_state_follows_the_parameter_sharding(cautious):
    from tests.test_sharding import SPECS, first_mu, host_tree, make_mesh, place, specs_of

    tx = adamfx.lion(1e-3, weight_decay=0.1, mu_dtype=jnp.bfloat16, cautious=cautious)
    params = place(host_tree(0), make_mesh())
    sharded = adamfx.init_sharded(tx, params)
    assert specs_of(first_mu(sharded)) == SPECS
    updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), sharded, params)
    assert specs_of(updates) == SPECS


def test_unknown_convention():
    with pytest.raises(ValueError, match="'optax', 'keras', 'torch'"):
        adamfx.lion(convention="jax")
