"""Muon against the live peers (issue 13): torch.optim.Muon (+ torch.optim.AdamW), keras.optimizers.Muon,
optax.contrib.muon, and a NumPy transcription of Jordan et al.'s algorithm.

The tree holds matrices of two shapes (one wide, one tall, so both orientations of
Newton-Schulz and of the shape factor are exercised), a vector and a scalar; the
float64 runs take 150 steps and must agree to 1e-10 (max abs).

Two peers hard-code a lower precision, so their float64 step is run with that part
in float64, and said so:

- PyTorch casts the Newton-Schulz input to bfloat16 (``_zeropower_via_newtonschulz``):
  :func:`torch_ns_in_float64` makes that cast a no-op for the run. The shipped bfloat16
  PyTorch is compared at its own spread (its distance from its float64 run).
- Keras computes the Frobenius norm through ``ops.norm``, which promotes float64 to
  float32 on the JAX backend (``peers.keras_f32_ops``): :func:`keras_norm_in_float64`
  replaces ``ops.norm`` by a float64 norm for the run (the test checks nothing else is float32).
"""

from __future__ import annotations

import contextlib

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamfx
from tests import peers

SHAPES = {"w": (3, 4), "v": (5, 3), "b": (4,), "s": ()}
MATRICES = ("v", "w")  # sorted, as peers.flatten orders the leaves
STEPS = 150
PROBLEM = peers.make_problem(shapes=SHAPES)
MATRIX_PROBLEM = peers.make_problem(shapes={k: SHAPES[k] for k in MATRICES})


# -- adamfx and optax -----------------------------------------------------------------------------


def run_adamfx(convention, problem=PROBLEM, steps=STEPS, dtype=np.float64, **kwargs):
    ns_dtype = kwargs.pop("ns_dtype", dtype)
    with peers.precision(dtype):
        tx = adamfx.muon(**kwargs, ns_dtype=ns_dtype, convention=convention)
    return peers.run_transform(tx, problem, steps, dtype)


def run_optax(problem=PROBLEM, steps=STEPS, dtype=np.float64, **kwargs):
    with peers.precision(dtype):
        tx = optax.contrib.muon(**kwargs)
    return peers.run_transform(tx, problem, steps, dtype)


# -- PyTorch ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def torch_ns_in_float64():
    """torch.optim.Muon's Newton-Schulz without its bfloat16 cast (``Tensor.bfloat16`` returns a float64 copy).

    A copy, as the cast makes: the iteration divides its input in place, which with
    ``nesterov=False`` is the momentum buffer itself.
    """
    import torch

    original = torch.Tensor.bfloat16
    torch.Tensor.bfloat16 = lambda self, *args, **kwargs: self.clone()
    try:
        yield
    finally:
        torch.Tensor.bfloat16 = original


def run_torch(muon_kwargs, adamw_kwargs, problem=PROBLEM, steps=STEPS, gamma=None, dtype=np.float64):
    """torch.optim.Muon on the matrices and torch.optim.AdamW on the rest (PyTorch's recipe)."""
    import torch

    keys = sorted(problem.init_params)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these matrices are tiny: threads only contend (10x slower on a loaded machine)
    with peers._torch_default_dtype(torch, dtype):
        tensors = {k: torch.tensor(v, requires_grad=True) for k, v in problem.params_in(dtype).items()}
        matrices = [tensors[k] for k in keys if tensors[k].ndim == 2]
        others = [tensors[k] for k in keys if tensors[k].ndim != 2]
        optimizers = [torch.optim.Muon(matrices, **muon_kwargs)]
        if others:
            optimizers.append(torch.optim.AdamW(others, **adamw_kwargs))
        schedulers = [torch.optim.lr_scheduler.ExponentialLR(o, gamma) for o in optimizers] if gamma else []

        def update(state, grads):
            for k in keys:
                tensors[k].grad = torch.from_numpy(grads[k])
            for o in optimizers:
                o.step()
            for s in schedulers:
                s.step()
            return state

        try:
            return peers._trajectory(
                problem, steps, None, lambda _: {k: t.detach().numpy() for k, t in tensors.items()}, update
            )
        finally:
            torch.set_num_threads(threads)


# -- Keras ------------------------------------------------------------------------------------------


def _float64_norm(x, ord=None, axis=None, keepdims=False):
    assert ord in (None, "fro"), ord
    return jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=keepdims))


@contextlib.contextmanager
def keras_norm_in_float64():
    """keras.optimizers.Muon with its ``ops.norm`` (float32 under float64 on JAX) computed in float64."""
    from keras.src.optimizers import muon as keras_muon

    original = keras_muon.ops.norm
    keras_muon.ops.norm = _float64_norm
    try:
        yield
    finally:
        keras_muon.ops.norm = original


def run_keras(kwargs, problem=PROBLEM, steps=STEPS, schedule=None, dtype=np.float64):
    with keras_norm_in_float64():
        return peers.run_keras("Muon", {"exclude_embeddings": False, **kwargs}, problem, steps, dtype, schedule)


# -- The cases --------------------------------------------------------------------------------------

LR = 0.02
COEFFS = (3.0, -3.2, 1.2)


def decaying(count):
    """``LR 0.98^t`` in float64 (optax.exponential_decay computes in float32 under x64)."""
    return LR * jnp.power(0.98, jnp.asarray(count, dtype=float))


def case(name):
    """(adamfx kwargs per convention, torch (muon, adamw, gamma), keras (kwargs, schedule), optax kwargs)."""
    if name == "defaults":
        return {}, ({}, {}, None), ({}, None), {"learning_rate": 1e-3}
    if name == "hyperparameters":
        ours = {
            "learning_rate": LR,
            "momentum": 0.9,
            "nesterov": False,
            "ns_steps": 4,
            "ns_coefficients": COEFFS,
            "adam_b1": 0.8,
            "adam_b2": 0.99,
            "adam_learning_rate": LR / 2,
            "weight_decay": 0.0,
            "adam_weight_decay": 0.0,
        }
        torch = (
            {
                "lr": LR,
                "momentum": 0.9,
                "nesterov": False,
                "ns_steps": 4,
                "ns_coefficients": COEFFS,
                "eps": 1e-6,
                "weight_decay": 0.0,
            },
            {"lr": LR / 2, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.0},
            None,
        )
        keras = (
            {
                "learning_rate": LR,
                "momentum": 0.9,
                "nesterov": False,
                "ns_steps": 4,
                "muon_a": COEFFS[0],
                "muon_b": COEFFS[1],
                "muon_c": COEFFS[2],
                "adam_beta_1": 0.8,
                "adam_beta_2": 0.99,
                "adam_lr_ratio": 0.5,
                "epsilon": 1e-6,
                "weight_decay": None,
                "adam_weight_decay": None,
                "rms_rate": 0.3,
            },
            None,
        )
        optax_kwargs = {
            "learning_rate": LR,
            "beta": 0.9,
            "nesterov": False,
            "ns_steps": 4,
            "ns_coeffs": COEFFS,
            "eps": 1e-6,
            "adam_b1": 0.8,
            "adam_b2": 0.99,
            "adam_learning_rate": LR / 2,
            "consistent_rms": 0.3,
        }
        return ours, torch, keras, optax_kwargs
    if name == "weight_decay":
        ours = {"learning_rate": LR, "weight_decay": 0.05, "adam_weight_decay": 0.02}
        torch = ({"lr": LR, "weight_decay": 0.05}, {"lr": LR, "weight_decay": 0.02}, None)
        keras = ({"learning_rate": LR, "weight_decay": 0.05, "adam_weight_decay": 0.02}, None)
        return ours, torch, keras, {**ours}
    if name == "schedule":
        ours = {"learning_rate": decaying, "weight_decay": 0.05, "adam_weight_decay": 0.02}
        torch = ({"lr": LR, "weight_decay": 0.05}, {"lr": LR, "weight_decay": 0.02}, 0.98)
        keras = ({"learning_rate": LR, "weight_decay": 0.05, "adam_weight_decay": 0.02}, ("exponential", 0.98))
        return ours, torch, keras, {**ours}
    raise KeyError(name)


def ours_for(name, convention):
    ours = dict(case(name)[0])
    if name == "hyperparameters":  # each peer's spelling of the same knobs (Keras's NS eps is fixed at 1e-7)
        ours |= {
            "torch": {"eps": 1e-6, "adam_eps": 1e-6, "consistent_rms": 0.2},
            "keras": {"adam_eps": 1e-6, "consistent_rms": 0.3},
            "optax": {"eps": 1e-6, "consistent_rms": 0.3},
        }[convention]
    return ours


def peer_trajectory(convention, name, steps=STEPS):
    _, torch_args, keras_args, optax_kwargs = case(name)
    if convention == "torch":
        muon_kwargs, adamw_kwargs, gamma = torch_args
        if name == "hyperparameters":
            muon_kwargs = {**muon_kwargs, "adjust_lr_fn": "match_rms_adamw"}
        with torch_ns_in_float64():
            return run_torch(muon_kwargs, adamw_kwargs, steps=steps, gamma=gamma)
    if convention == "keras":
        return run_keras(keras_args[0], steps=steps, schedule=keras_args[1])
    return run_optax(steps=steps, **optax_kwargs)


CASES = ("defaults", "hyperparameters", "weight_decay", "schedule")
CONVENTIONS = ("torch", "keras", "optax")


def _grid():
    """The default suite: the defaults over 40 steps per convention; CI (slow): every case over 150 steps."""
    for c in CONVENTIONS:
        yield pytest.param(c, "defaults", 40, id=f"{c}-defaults-40")
    for n in CASES:
        for c in CONVENTIONS:
            yield pytest.param(c, n, STEPS, marks=pytest.mark.slow, id=f"{c}-{n}")


@pytest.mark.parametrize(("convention", "name", "steps"), list(_grid()))
def test_float64_matches_the_peer(convention, name, steps):
    ours = run_adamfx(convention, steps=steps, **ours_for(name, convention))
    peer = peer_trajectory(convention, name, steps)
    assert np.abs(ours[-1] - peers.flatten(PROBLEM.init_params)).max() > 1e-2  # the run went somewhere
    assert peers.max_abs_diff(ours, peer) <= 1e-10, peers.max_abs_diff(ours, peer)


@pytest.mark.slow
def test_torch_muon_alone_on_matrices():
    """torch.optim.Muon by itself (it takes only 2-D params), non-default knobs, 150 steps."""
    muon_kwargs = {"lr": LR, "momentum": 0.9, "weight_decay": 0.05, "eps": 1e-6, "ns_steps": 6}
    with torch_ns_in_float64():
        peer = run_torch(muon_kwargs, {}, problem=MATRIX_PROBLEM)
    ours = run_adamfx(
        "torch", problem=MATRIX_PROBLEM, learning_rate=LR, momentum=0.9, weight_decay=0.05, eps=1e-6, ns_steps=6
    )
    assert peers.max_abs_diff(ours, peer) <= 1e-10, peers.max_abs_diff(ours, peer)


@pytest.mark.slow
def test_keras_runs_in_float64_once_its_norm_is():
    """The only float32 inside keras.optimizers.Muon under float64 is ops.norm's (what the patch replaces)."""
    assert any("reduce_sum" in line for line in peers.keras_f32_ops("Muon", {}, PROBLEM))
    with keras_norm_in_float64():
        assert peers.keras_f32_ops("Muon", {}, PROBLEM) == []


@pytest.mark.slow
def test_shipped_bfloat16_torch_at_its_own_spread():
    """The shipped torch.optim.Muon (bfloat16 Newton-Schulz) against adamfx with ns_dtype=bfloat16.

    The shipped run is off its own float64 run by its bfloat16 spread; adamfx in bfloat16 must be
    within that spread of it (the two round at different points of the iteration: PyTorch's addmm
    rounds ``b A + c A^2`` once), and its own float32 default nearer the float64 run than the shipped peer.
    """
    steps = 50
    muon_kwargs, adamw_kwargs = {"lr": LR}, {"lr": LR}
    shipped = run_torch(muon_kwargs, adamw_kwargs, steps=steps)
    with torch_ns_in_float64():
        exact = run_torch(muon_kwargs, adamw_kwargs, steps=steps)
    spread = peers.max_abs_diff(shipped, exact)
    assert spread > 1e-4  # bfloat16 is visible
    ours_bf16 = run_adamfx("torch", steps=steps, learning_rate=LR, ns_dtype=jnp.bfloat16)
    ours_f32 = run_adamfx("torch", steps=steps, learning_rate=LR, ns_dtype=jnp.float32)
    assert peers.max_abs_diff(ours_bf16, shipped) <= spread, (peers.max_abs_diff(ours_bf16, shipped), spread)
    assert peers.max_abs_diff(ours_f32, exact) <= spread / 100, (peers.max_abs_diff(ours_f32, exact), spread)


# -- Jordan et al.'s algorithm in NumPy -------------------------------------------------------------


def numpy_muon(
    problem, steps, lr=LR, momentum=0.95, weight_decay=0.1, coefficients=(3.4445, -4.7750, 2.0315), ns_steps=5, eps=1e-7
):
    """Muon as Jordan et al. (2024; github.com/KellerJordan/Muon, ``muon_update``) write it, in NumPy float64.

    Matrices only: EMA momentum, Nesterov look-ahead, Newton-Schulz on the wide orientation,
    ``sqrt(max(1, rows/cols))``, decoupled weight decay.
    """
    p = problem.params_in(np.float64)
    buf = {k: np.zeros_like(x) for k, x in p.items()}
    rows = []
    a, b, c = coefficients
    for t in range(steps):
        g = problem.grad(p, t)
        for k in p:
            buf[k] = momentum * buf[k] + (1 - momentum) * g[k]  # momentum.lerp_(grad, 1 - beta)
            update = momentum * buf[k] + (1 - momentum) * g[k]  # grad.lerp_(momentum, beta)
            x = update.T if update.shape[0] > update.shape[1] else update
            x = x / max(np.linalg.norm(x), eps)
            for _ in range(ns_steps):
                gram = x @ x.T
                x = a * x + (b * gram + c * gram @ gram) @ x
            x = x.T if update.shape[0] > update.shape[1] else x
            x = x * max(1, update.shape[0] / update.shape[1]) ** 0.5
            p[k] = p[k] * (1 - lr * weight_decay) - lr * x
        rows.append(peers.flatten(p))
    return np.stack(rows)


def test_matches_a_numpy_transcription_of_jordan_et_al():
    steps = 40
    ours = run_adamfx("torch", problem=MATRIX_PROBLEM, steps=steps, learning_rate=LR)
    reference = numpy_muon(MATRIX_PROBLEM, steps)
    assert peers.max_abs_diff(ours, reference) <= 1e-10, peers.max_abs_diff(ours, reference)
