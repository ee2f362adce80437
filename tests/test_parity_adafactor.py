"""Parity: adafactor against torch.optim.Adafactor, keras.optimizers.Adafactor, optax.adafactor, and a NumPy
transcription of Shazeer & Stern (2018), Alg. 4 (matrices) and 5 (vectors).

Every case runs 150 jitted steps of the noisy quadratic of ``tests/peers.py`` on a tree of a 200 x 130 matrix
(both sides >= 128: optax factors it), a 5 x 7 matrix (optax keeps it whole by default; PyTorch and Keras factor
it), a vector and a scalar, in float64, and must agree with the peer to <= 1e-10 (max abs).

Two peers hard-code float32 in a float64 run, so each is run twice:

- **optax** computes ``b2_t = 1 - t^(-decay_rate)`` in float32 (``factorized._decay_rate_pow``) and keeps the
  momentum in float32 (``dtype_momentum``). Reference at 1e-10: ``optax.adafactor``'s own chain with the same
  stages and that one step in float64 (:func:`optax_adafactor64`). The shipped ``optax.adafactor`` is compared at
  its own spread: ours may be off it by no more than it is off its float64 version (+ 1e-10).
- **Keras** promotes ``ops.mean`` to float32 on the JAX backend (``peers.keras_f32_ops``). Reference at 1e-10:
  Keras's Adafactor with ``ops.mean`` computing in float64 (:func:`keras_mean_in_float64`; no float32 op is left,
  which the test checks); the shipped one at its own spread.

PyTorch runs in float64 throughout. Knobs a peer lacks (PyTorch and Keras have no momentum, no switch for the
update clipping or the parameter scale, a relative step that is always on, and factor every matrix) are
compared with the NumPy transcription, which is independent of adamfx's stages.
"""

from __future__ import annotations

import contextlib
import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax._src import factorized

import adamfx
from tests import peers

STEPS = 150
TOLERANCE = 1e-10  # float64, max abs over the trajectory
F32_TOLERANCE = 1e-5  # float32, relative (peers.max_rel_diff)
GAMMA = 0.99  # exponential schedule: lr * GAMMA**(t - 1) at step t
SHAPES = {"big": (200, 130), "w": (5, 7), "b": (7,), "s": ()}
PROBLEM = peers.make_problem(shapes=SHAPES)


# --------------------------------------------------------------------------
# The peers, with their float32 steps in float64
# --------------------------------------------------------------------------


def _decay_rate_pow64(step, exponent=0.8):
    """optax's ``_decay_rate_pow`` with ``t`` in float64 instead of float32."""
    t = jnp.asarray(step + 1, jnp.float64)
    return 1.0 - t ** (-exponent)


def optax_adafactor64(
    learning_rate=None,
    min_dim_size_to_factor=128,
    decay_rate=0.8,
    multiply_by_parameter_scale=True,
    clipping_threshold=1.0,
    momentum=None,
    weight_decay_rate=None,
    eps=1e-30,
):
    """The stages of ``optax.adafactor`` (optax/_src/alias.py) in its order, with b2_t and momentum in float64."""
    tx = [factorized.scale_by_factored_rms(True, decay_rate, 0, min_dim_size_to_factor, eps, _decay_rate_pow64)]
    if clipping_threshold is not None:
        tx.append(optax.clip_by_block_rms(clipping_threshold))
    if learning_rate is not None:
        tx.append(optax.scale_by_learning_rate(learning_rate, flip_sign=False))
    if multiply_by_parameter_scale:
        tx.append(optax.scale_by_param_block_rms())
    if momentum is not None:
        tx.append(optax.ema(momentum, debias=False, accumulator_dtype=jnp.float64))
    if weight_decay_rate is not None:
        tx.append(optax.add_decayed_weights(weight_decay_rate))
    tx.append(optax.scale(-1))
    return optax.chain(*tx)


@contextlib.contextmanager
def keras_mean_in_float64():
    """Keras's Adafactor with ``ops.mean`` in the input's dtype (Keras's promotion makes it float32)."""
    import keras
    from keras.src.optimizers import adafactor as module

    real = module.ops

    class Ops:
        def __getattr__(self, name):
            return getattr(real, name)

        @staticmethod
        def mean(x, axis=None, keepdims=False):
            return jnp.mean(keras.ops.convert_to_tensor(x), axis=axis, keepdims=keepdims)

    module.ops = Ops()
    try:
        yield
    finally:
        module.ops = real


def relative_schedule(lr):
    """optax has no relative step: ``min(lr, 1/sqrt(t))`` as a schedule of ``count = t - 1``."""
    return lambda count: jnp.minimum(lr, 1 / jnp.sqrt(jnp.asarray(count + 1, float)))


def exponential(lr):
    """``lr * GAMMA**count`` in the state's dtype (``optax.exponential_decay`` is float32 for an int32 count)."""
    return lambda count: lr * GAMMA**count


def ours(convention, kwargs, dtype=np.float64):
    kwargs = dict(kwargs)
    if kwargs.pop("schedule", False):
        lr = kwargs.get("learning_rate") or adamfx._src.optimizers.adafactor.ADAFACTOR_CONVENTIONS[convention][0]
        kwargs["learning_rate"] = exponential(lr)
    return peers.run_transform(adamfx.adafactor(**kwargs, convention=convention), PROBLEM, STEPS, dtype)


# adamfx kwargs ("schedule": the exponential schedule) -> the peer's kwargs, per convention.
TORCH_CASES = {
    "defaults": ({}, {}),
    "hyperparameters": (
        {"learning_rate": 0.05, "decay_rate": 0.6, "clipping_threshold": 2.0, "eps": 1e-12, "eps_scale": 1e-2},
        {"lr": 0.05, "beta2_decay": -0.6, "d": 2.0, "eps": (1e-12, 1e-2)},
    ),
    "weight_decay": ({"learning_rate": 0.05, "weight_decay": 0.1}, {"lr": 0.05, "weight_decay": 0.1}),
    "schedule": (
        {"learning_rate": 0.05, "weight_decay": 0.1, "schedule": True},
        {"lr": 0.05, "weight_decay": 0.1, "schedule": True},
    ),
    "maximize": ({"maximize": True}, {"maximize": True}),
}
KERAS_CASES = {
    "defaults": ({}, {}),
    "hyperparameters": (
        {"learning_rate": 0.05, "decay_rate": 0.6, "clipping_threshold": 2.0, "eps": 1e-20, "eps_scale": 1e-2},
        {"learning_rate": 0.05, "beta_2_decay": -0.6, "clip_threshold": 2.0, "epsilon_1": 1e-20, "epsilon_2": 1e-2},
    ),
    # Keras decays first: the parameter scale reads the decayed parameters
    "weight_decay": ({"learning_rate": 0.05, "weight_decay": 0.1}, {"learning_rate": 0.05, "weight_decay": 0.1}),
    "schedule": (
        {"learning_rate": 0.05, "weight_decay": 0.1, "schedule": True},
        {"learning_rate": 0.05, "weight_decay": 0.1, "schedule": True},
    ),
    "clipnorm": ({"clipnorm": 1.0}, {"clipnorm": 1.0}),
}
OPTAX_CASES = {
    "defaults": ({}, {}),
    "hyperparameters": (
        {
            "learning_rate": 0.05,
            "decay_rate": 0.6,
            "clipping_threshold": 2.0,
            "eps": 1e-20,
            "min_dim_size_to_factor": 5,
        },
        {
            "learning_rate": 0.05,
            "decay_rate": 0.6,
            "clipping_threshold": 2.0,
            "eps": 1e-20,
            "min_dim_size_to_factor": 5,
        },
    ),
    "weight_decay": ({"learning_rate": 0.05, "weight_decay": 1e-3}, {"learning_rate": 0.05, "weight_decay_rate": 1e-3}),
    "schedule": (
        {"learning_rate": 0.05, "weight_decay": 1e-3, "schedule": True},
        {"learning_rate": exponential(0.05), "weight_decay_rate": 1e-3},
    ),
    "momentum": ({"learning_rate": 0.05, "momentum": 0.9}, {"learning_rate": 0.05, "momentum": 0.9}),
    "relative_step": (
        {"learning_rate": 0.05, "relative_step": True},
        {"learning_rate": relative_schedule(0.05)},
    ),
    "no_parameter_scale": (
        {"learning_rate": 0.01, "multiply_by_parameter_scale": False},
        {"learning_rate": 0.01, "multiply_by_parameter_scale": False},
    ),
    "no_clipping": (  # with optax's default (no learning rate) the unclipped steps diverge
        {"learning_rate": 0.01, "clipping_threshold": None},
        {"learning_rate": 0.01, "clipping_threshold": None},
    ),
}
DEFAULT_SUITE = ("defaults",)


def _cases(table):
    return [pytest.param(name, marks=() if name in DEFAULT_SUITE else pytest.mark.slow) for name in table]


def run_torch(kwargs, dtype=np.float64):
    kwargs = dict(kwargs)
    scheduler = ("exponential", GAMMA) if kwargs.pop("schedule", False) else None
    return peers.run_torch("Adafactor", kwargs, PROBLEM, STEPS, dtype, scheduler=scheduler)


def run_keras(kwargs, dtype=np.float64):
    kwargs = dict(kwargs)
    schedule = ("exponential", GAMMA) if kwargs.pop("schedule", False) else None
    return peers.run_keras("Adafactor", kwargs, PROBLEM, STEPS, dtype, schedule=schedule)


@pytest.mark.parametrize("case", _cases(TORCH_CASES))
def test_torch(case):
    mine, theirs = TORCH_CASES[case]
    assert peers.max_abs_diff(ours("torch", mine), run_torch(theirs)) <= TOLERANCE


@pytest.mark.parametrize("case", _cases(KERAS_CASES))
def test_keras(case):
    mine, theirs = KERAS_CASES[case]
    actual = ours("keras", mine)
    with keras_mean_in_float64():
        schedule = ("exponential", GAMMA) if theirs.get("schedule") else None
        unscheduled = {k: v for k, v in theirs.items() if k != "schedule"}
        assert peers.keras_f32_ops("Adafactor", unscheduled, PROBLEM, schedule) == []
        exact = run_keras(theirs)
    assert peers.max_abs_diff(actual, exact) <= TOLERANCE
    shipped = run_keras(theirs)
    assert peers.max_abs_diff(actual, shipped) <= peers.max_abs_diff(shipped, exact) + TOLERANCE


@pytest.mark.parametrize("case", _cases(OPTAX_CASES))
def test_optax(case):
    mine, theirs = OPTAX_CASES[case]
    actual = ours("optax", mine)
    with peers.precision(np.float64):  # optax.ema keeps its decay as an array made at construction
        exact_tx, shipped_tx = optax_adafactor64(**theirs), optax.adafactor(**theirs)
    exact = peers.run_transform(exact_tx, PROBLEM, STEPS)
    assert peers.max_abs_diff(actual, exact) <= TOLERANCE
    shipped = peers.run_transform(shipped_tx, PROBLEM, STEPS)
    spread = peers.max_abs_diff(shipped, exact)
    assert spread > 0  # the shipped peer's float32 step is visible, so the reference above is not the shipped one
    assert peers.max_abs_diff(actual, shipped) <= spread + TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("convention", ["torch", "keras", "optax"])
def test_float32(convention):
    """float32 within 1e-5 of the peer's float32 run, or of its float64 run and no farther than the peer.

    optax runs at ``learning_rate=0.05``: with its default (no learning rate, steps of size ``RMS(p)``)
    the problem amplifies float32 rounding, and optax's own float32 run is 4.3e-5 off its float64 run
    (measured; ours 4.9e-5).
    """

    def run(dtype):
        if convention == "optax":
            return peers.run_transform(optax.adafactor(0.05), PROBLEM, STEPS, dtype)
        return (run_torch if convention == "torch" else run_keras)({}, dtype)

    mine = {"learning_rate": 0.05} if convention == "optax" else {}
    peers.assert_matches_peer(ours(convention, mine, np.float32), run(np.float32), np.float32, lambda: run(np.float64))


# --------------------------------------------------------------------------
# Shazeer & Stern (2018), Alg. 4 (matrix) and 5 (vector), in NumPy
# --------------------------------------------------------------------------


def numpy_adafactor(
    steps,
    *,
    rho_cap=1e-2,
    relative=True,
    parameter_scale=True,
    eps1=1e-30,
    eps2=1e-3,
    d=1.0,
    decay_rate=0.8,
    factor_min=2,
    clamp=False,
    momentum=None,
):
    """The paper's algorithm with sums (``R_t = ... (G^2 + eps1 1 1^T) 1_m``, ``V^ = R C / (1^T R)``).

    Beyond the paper, for the knobs the peers add: ``rho_cap`` (the paper's 1e-2; PyTorch and Keras
    take their lr), ``relative=False`` (``rho_t = rho_cap``), ``parameter_scale=False``, ``d=None`` (no
    clipping), ``factor_min`` (factor matrices whose sides are all >= it), ``clamp`` (PyTorch's eps1:
    ``x = G^2``, the mean of the row means floored at eps1, ``U = G / max(sqrt(V^), eps1)``) and
    ``momentum`` (optax's ``m_t = b m_{t-1} + (1 - b) alpha_t U^_t`` in place of the step).
    """
    p = PROBLEM.params_in(np.float64)
    rows, cols, full, mom = {}, {}, {}, {}
    factored = {k: x.ndim == 2 and min(x.shape) >= factor_min for k, x in p.items()}
    for k, x in p.items():
        if factored[k]:
            rows[k], cols[k] = np.zeros(x.shape[0]), np.zeros(x.shape[1])
        else:
            full[k] = np.zeros_like(x)
        mom[k] = np.zeros_like(x)
    out = []
    for t in range(1, steps + 1):
        g = PROBLEM.grad(p, t - 1)
        rho = min(rho_cap, 1 / math.sqrt(t)) if relative else rho_cap
        beta2 = 1 - t ** (-decay_rate)
        for k in sorted(p):
            x = p[k]
            alpha = max(eps2, math.sqrt(np.mean(x**2))) * rho if parameter_scale else rho
            sq = g[k] ** 2 + (0.0 if clamp else eps1)
            if factored[k]:
                n, m = x.shape
                rows[k] = beta2 * rows[k] + (1 - beta2) * sq.sum(axis=1)  # R_t = ... (G^2 + eps1) 1_m
                cols[k] = beta2 * cols[k] + (1 - beta2) * sq.sum(axis=0)  # C_t = ... 1_n^T (G^2 + eps1)
                total = rows[k].sum()  # 1_n^T R_t
                if clamp:  # PyTorch: the row *mean* of the row means floored at eps1
                    total = max(total / (n * m), eps1) * n * m
                v = np.outer(rows[k], cols[k]) / total
            else:
                full[k] = beta2 * full[k] + (1 - beta2) * sq
                v = full[k]
            u = g[k] / (np.maximum(np.sqrt(v), eps1) if clamp else np.sqrt(v))
            if d is not None:
                u = u / max(1.0, math.sqrt(np.mean(u**2)) / d)
            step = alpha * u
            if momentum is not None:
                mom[k] = momentum * mom[k] + (1 - momentum) * step
                step = mom[k]
            p[k] = x - step
        out.append(peers.flatten(p))
    return np.stack(out)


PAPER = {"learning_rate": 1e-2, "relative_step": True, "min_dim_size_to_factor": 1}
#: convention, adamfx kwargs, NumPy kwargs: the paper itself, and the knobs PyTorch and Keras do not have.
PAPER_CASES = {
    "paper-optax": ("optax", PAPER, {}),
    "paper-keras": ("keras", {"learning_rate": 1e-2}, {}),
    "torch-relative_step_off": (
        "torch",
        {"learning_rate": 0.05, "relative_step": False},
        {"rho_cap": 0.05, "relative": False, "clamp": True, "eps1": 2.0**-52},
    ),
    "keras-relative_step_off": (
        "keras",
        {"learning_rate": 0.05, "relative_step": False},
        {"rho_cap": 0.05, "relative": False},
    ),
    "torch-no_parameter_scale": (
        "torch",
        {"multiply_by_parameter_scale": False},
        {"parameter_scale": False, "clamp": True, "eps1": 2.0**-52},
    ),
    "keras-no_parameter_scale": (
        "keras",
        {"learning_rate": 0.01, "multiply_by_parameter_scale": False},
        {"parameter_scale": False},
    ),
    "torch-momentum": ("torch", {"momentum": 0.9}, {"momentum": 0.9, "clamp": True, "eps1": 2.0**-52}),
    "keras-momentum": ("keras", {"learning_rate": 1e-2, "momentum": 0.8}, {"momentum": 0.8}),
    "torch-no_clipping": ("torch", {"clipping_threshold": None}, {"d": None, "clamp": True, "eps1": 2.0**-52}),
    "keras-no_clipping": ("keras", {"learning_rate": 1e-2, "clipping_threshold": None}, {"d": None}),
    "torch-min_dim_size": (
        "torch",
        {"min_dim_size_to_factor": 128},
        {"factor_min": 128, "clamp": True, "eps1": 2.0**-52},
    ),
}


@pytest.mark.parametrize(
    "case", [pytest.param(name, marks=() if name == "paper-optax" else pytest.mark.slow) for name in PAPER_CASES]
)
def test_numpy_transcription(case):
    convention, mine, reference = PAPER_CASES[case]
    assert peers.max_abs_diff(ours(convention, mine), numpy_adafactor(STEPS, **reference)) <= TOLERANCE


@pytest.mark.slow
def test_numpy_transcription_is_the_peers_algorithm():
    """The transcription itself, with PyTorch's eps placement and defaults, is PyTorch's Adafactor."""
    reference = numpy_adafactor(STEPS, clamp=True, eps1=np.finfo(np.float64).eps)
    assert peers.max_abs_diff(reference, run_torch({})) <= TOLERANCE
