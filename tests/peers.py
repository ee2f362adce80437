"""Run the live peer optimizers (PyTorch, Keras 3 on JAX, optax) on one problem.

Parity tests compare adamfx against the real implementations instead of
re-typed formulas. Every runner drives its optimizer with the *same*
deterministic gradient sequence (`Problem.grad`) and returns a trajectory:

    trajectory: np.ndarray of shape (steps, n_params), in the run's dtype.
    Row i holds all parameters after update t = i + 1 (the initial point is
    not included), flattened leaf by leaf in sorted-key order (`flatten`).
    `Problem.unflatten(row)` turns a row back into a parameter dict.

Precision: float64 runs are float64 end to end. JAX runs inside
`jax.enable_x64(True)`; Keras additionally needs `floatx` set to float64,
otherwise it stores `learning_rate` as a float32 variable (1e-3 becomes
1.0000000475e-3) and float64 Adam drifts from exact arithmetic by ~1e-8.
Both settings are scoped to a single run and restored afterwards.
Keras Adafactor and Muon still compute parts of their update in float32
(see `keras_f32_ops`), so they cannot be compared at 1e-12.

Torch and Keras are imported lazily; this module sets KERAS_BACKEND=jax.

Steps: `Problem.grad(params, step)` takes the 0-based step index; the peers'
own step counters (torch `state["step"]`, Keras `iterations + 1`, optax
`count + 1`) therefore equal step + 1 when that gradient is applied.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

os.environ["KERAS_BACKEND"] = "jax"  # must precede any `import keras`

import jax
import jax.numpy as jnp
import optax

Params = dict[str, np.ndarray]

#: Leaf shapes of the default problem: a matrix, a vector and a scalar.
SHAPES: Mapping[str, tuple[int, ...]] = {"w": (3, 4), "b": (4,), "s": ()}


# --------------------------------------------------------------------------
# The common problem
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Problem:
    """Noisy quadratic: grad = a * (p - target) + noise(step), per leaf.

    `a` (curvature, in [0.5, 2]) and `target` are fixed per leaf; the noise is
    N(0, noise_scale^2), drawn from `np.random.default_rng(seed + step)` so
    every framework sees the same sequence for the same parameters. All
    constants are stored in float64 and cast to the dtype of `params`.
    """

    init_params: Params
    a: Params
    target: Params
    seed: int
    noise_scale: float

    def grad(self, params: Mapping[str, Any], step: int) -> Params:
        """Gradient at `params` (any array-likes) for 0-based `step`."""
        rng = np.random.default_rng(self.seed + step)
        out = {}
        for k in sorted(self.init_params):
            p = np.asarray(params[k])
            noise = self.noise_scale * rng.standard_normal(p.shape)
            dt = p.dtype
            out[k] = np.asarray(self.a[k].astype(dt) * (p - self.target[k].astype(dt)) + noise.astype(dt))
        return out

    def params_in(self, dtype) -> Params:
        """Copy of `init_params` cast to `dtype`."""
        return {k: np.array(v, dtype=dtype) for k, v in self.init_params.items()}

    def unflatten(self, row: np.ndarray) -> Params:
        """Inverse of `flatten` for this problem's leaf shapes."""
        out, i = {}, 0
        for k in sorted(self.init_params):
            shape = np.shape(self.init_params[k])
            n = int(np.prod(shape))
            out[k] = np.asarray(row[i : i + n]).reshape(shape)
            i += n
        return out


def make_problem(dtype=np.float64, seed: int = 0, shapes=SHAPES, noise_scale: float = 0.5) -> Problem:
    """Build the standard problem; `init_params` are in `dtype`."""
    rng = np.random.default_rng([seed, 0xC0FFEE])  # independent of step noise
    keys = sorted(shapes)
    a = {k: rng.uniform(0.5, 2.0, shapes[k]) for k in keys}
    target = {k: rng.standard_normal(shapes[k]) for k in keys}
    init = {k: rng.standard_normal(shapes[k]).astype(dtype) for k in keys}
    return Problem(init, a, target, seed, noise_scale)


def flatten(params: Mapping[str, Any]) -> np.ndarray:
    """Concatenate the raveled leaves of `params` in sorted-key order."""
    return np.concatenate([np.ravel(np.asarray(params[k])) for k in sorted(params)])


def _trajectory(problem: Problem, steps: int, state, params_of: Callable, update: Callable) -> np.ndarray:
    """Shared driver: `update(state, grads)` -> state, `params_of(state)` -> dict."""
    rows = []
    for step in range(steps):
        state = update(state, problem.grad(params_of(state), step))
        rows.append(flatten(params_of(state)))
    return np.stack(rows)


# --------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------

#: scheduler spec kind -> factory(optimizer, argument)
TORCH_SCHEDULERS: Mapping[str, Callable] = {
    "exponential": lambda opt, gamma: _torch().optim.lr_scheduler.ExponentialLR(opt, gamma),
    "lambda": lambda opt, fn: _torch().optim.lr_scheduler.LambdaLR(opt, fn),
}


def _torch():
    import torch

    return torch


def run_torch(
    name: str, kwargs: Mapping[str, Any], problem: Problem, steps: int, dtype=np.float64, scheduler=None
) -> np.ndarray:
    """Trajectory of `torch.optim.<name>(params, **kwargs)` (`name` may be an optimizer class instead).

    `scheduler` is None, ("exponential", gamma) -> ExponentialLR or
    ("lambda", fn) -> LambdaLR (fn gets the step index from 0); it is stepped
    after every `opt.step()`. Torch picks its default implementation (the
    for-loop path on CPU) unless kwargs set `foreach`/`fused`.
    """
    torch = _torch()
    with _torch_default_dtype(torch, dtype):
        return _run_torch(torch, name, kwargs, problem, steps, dtype, scheduler)


@contextlib.contextmanager
def _torch_default_dtype(torch, dtype):
    """torch keeps scalar state (NAdam's mu_product) in its default dtype: a float64 run needs float64 there."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if np.dtype(dtype) == np.float64 else torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _run_torch(torch, name, kwargs, problem, steps, dtype, scheduler):
    keys = sorted(problem.init_params)
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in problem.params_in(dtype).items()}
    cls = getattr(torch.optim, name) if isinstance(name, str) else name  # or a peer package's optimizer class
    opt = cls([tensors[k] for k in keys], **kwargs)
    sched = TORCH_SCHEDULERS[scheduler[0]](opt, scheduler[1]) if scheduler else None

    def update(state, grads):
        for k in keys:
            tensors[k].grad = torch.from_numpy(grads[k])
        opt.step()
        if sched is not None:
            sched.step()
        return state

    return _trajectory(problem, steps, None, lambda _: {k: t.detach().numpy() for k, t in tensors.items()}, update)


# --------------------------------------------------------------------------
# Keras 3 (JAX backend)
# --------------------------------------------------------------------------

#: schedule spec kind -> factory(initial_lr, argument), one decay per step
KERAS_SCHEDULES: Mapping[str, Callable] = {
    "exponential": lambda lr, gamma: _keras().optimizers.schedules.ExponentialDecay(
        lr, decay_steps=1, decay_rate=gamma
    ),
    # lr / (1 + decay * iterations): the legacy tf.keras `decay=` argument.
    "inverse_time": lambda lr, decay: _keras().optimizers.schedules.InverseTimeDecay(
        lr, decay_steps=1, decay_rate=decay
    ),
}


def _keras():
    import keras

    if keras.backend.backend() != "jax":
        raise RuntimeError(f"keras was imported with backend {keras.backend.backend()!r}; peers needs 'jax'")
    return keras


@contextlib.contextmanager
def precision(dtype, keras_floatx: bool = False) -> Iterator[None]:
    """Scope JAX x64 (on iff dtype is float64) and optionally Keras floatx."""
    name = np.dtype(dtype).name
    with jax.enable_x64(name == "float64"):
        if not keras_floatx:
            yield
            return
        keras = _keras()
        old = keras.config.floatx()
        keras.config.set_floatx(name)
        try:
            yield
        finally:
            keras.config.set_floatx(old)


def _keras_build(name, kwargs, problem, dtype, schedule):
    """Build `keras.optimizers.<name>` and its keras.Variables (call in `precision`)."""
    keras = _keras()
    cls = getattr(keras.optimizers, name)
    kwargs = dict(kwargs)
    if schedule is not None:
        lr = kwargs.get("learning_rate", inspect.signature(cls).parameters["learning_rate"].default)
        kwargs["learning_rate"] = KERAS_SCHEDULES[schedule[0]](lr, schedule[1])
    opt = cls(**kwargs)
    init = problem.params_in(dtype)
    variables = [keras.Variable(init[k], dtype=np.dtype(dtype).name, name=k) for k in sorted(init)]
    opt.build(variables)
    return opt, variables


def _keras_stateless(opt):
    """(values, optimizer_values), grads -> same, via `opt.stateless_apply`."""

    def apply(state, grads):
        values, opt_values = state
        return opt.stateless_apply(opt_values, grads, values)

    return apply


def run_keras(
    name: str,
    kwargs: Mapping[str, Any],
    problem: Problem,
    steps: int,
    dtype=np.float64,
    schedule=None,
    jit: bool = True,
) -> np.ndarray:
    """Trajectory of `keras.optimizers.<name>(**kwargs)` on keras.Variables.

    `schedule` is None, ("exponential", gamma) or ("inverse_time", decay);
    it replaces `learning_rate` by the matching per-step schedule starting
    from kwargs' learning_rate (or the optimizer's default).

    jit=True runs `opt.stateless_apply` under `jax.jit` (fast);
    jit=False calls the eager `opt.apply(grads, variables)` every step. Both
    give the same numbers (checked in test_peers_selfcheck).
    """
    keys = sorted(problem.init_params)
    with precision(dtype, keras_floatx=True):
        opt, variables = _keras_build(name, kwargs, problem, dtype, schedule)
        if jit:
            apply = jax.jit(_keras_stateless(opt))
            state = ([v.value for v in variables], [v.value for v in opt.variables])

            def update(state, grads):
                return apply(state, [grads[k] for k in keys])
        else:
            state = (variables, None)  # the keras.Variables, updated in place

            def update(state, grads):
                opt.apply([grads[k] for k in keys], variables)
                return state

        def params_of(state):
            return dict(zip(keys, state[0], strict=True))

        return _trajectory(problem, steps, state, params_of, update)


def keras_f32_ops(name: str, kwargs: Mapping[str, Any], problem: Problem, schedule=None) -> list[str]:
    """Lines of the float64 update's jaxpr that compute in float32.

    Empty means the Keras optimizer really runs in float64. Keras's own type
    promotion (`keras.backend.result_type`) maps float64 to float32 on the
    JAX backend, so ops that promote through it (`ops.mean`, `ops.norm`)
    silently drop to float32: Adafactor and Muon are affected.
    """
    keys = sorted(problem.init_params)
    with precision(np.float64, keras_floatx=True):
        opt, variables = _keras_build(name, kwargs, problem, np.float64, schedule)
        grads = problem.grad(problem.params_in(np.float64), 0)
        jaxpr = jax.make_jaxpr(_keras_stateless(opt))(
            ([v.value for v in variables], [v.value for v in opt.variables]), [grads[k] for k in keys]
        )
    return [line.strip() for line in str(jaxpr).splitlines() if "f32" in line]


# --------------------------------------------------------------------------
# optax-compatible GradientTransformations (optax itself, later adamfx)
# --------------------------------------------------------------------------


def run_transform(tx: optax.GradientTransformation, problem: Problem, steps: int, dtype=np.float64) -> np.ndarray:
    """Trajectory of any optax-style `tx` (init/update) with apply_updates.

    Parameters are a dict of jnp arrays in `dtype`; one jitted function does
    `tx.update` + `optax.apply_updates` per step.
    """
    with precision(dtype):

        @jax.jit
        def apply(state, grads):
            params, opt_state = state
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        params = {k: jnp.asarray(v) for k, v in problem.params_in(dtype).items()}
        return _trajectory(problem, steps, (params, tx.init(params)), lambda s: s[0], apply)


# --------------------------------------------------------------------------
# Reference transcription and comparison helpers
# --------------------------------------------------------------------------


def numpy_adam(
    problem: Problem,
    steps: int,
    lr: float = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    dtype=np.float64,
    eps_hat: bool = False,
) -> np.ndarray:
    """Adam, Algorithm 1 of Kingma & Ba (2015), in NumPy.

    eps_hat=True uses the paper's Sec. 2 reordering instead,
    alpha_t = lr * sqrt(1 - b2^t) / (1 - b1^t), p -= alpha_t m / (sqrt(v) + eps),
    which is exactly Keras's formula (eps on the uncorrected sqrt(v)).
    """
    p = problem.params_in(dtype)  # hyperparameters stay Python floats (NEP 50)
    m = {k: np.zeros_like(x) for k, x in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    rows = []
    for t in range(1, steps + 1):
        g = problem.grad(p, t - 1)
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            if eps_hat:
                alpha_t = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
                p[k] = p[k] - alpha_t * m[k] / (np.sqrt(v[k]) + eps)
            else:
                m_hat, v_hat = m[k] / (1 - b1**t), v[k] / (1 - b2**t)
                p[k] = p[k] - lr * m_hat / (np.sqrt(v_hat) + eps)
        rows.append(flatten(p))
    return np.stack(rows)


def max_abs_diff(traj_a: np.ndarray, traj_b: np.ndarray) -> float:
    """max |a - b| over all steps and parameters, computed in float64."""
    a, b = np.asarray(traj_a, np.float64), np.asarray(traj_b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)))


def max_rel_diff(traj: np.ndarray, ref: np.ndarray) -> float:
    """max |traj - ref| / max(|ref|, 1), elementwise, computed in float64.

    Relative where |ref| > 1, absolute below, so parameters crossing zero do
    not blow the ratio up. Not symmetric: the second argument is the reference.
    """
    a, r = np.asarray(traj, np.float64), np.asarray(ref, np.float64)
    assert a.shape == r.shape, (a.shape, r.shape)
    return float(np.max(np.abs(a - r) / np.maximum(np.abs(r), 1.0)))


def assert_matches_peer(
    actual: np.ndarray, expected: np.ndarray, dtype, exact: Callable[[], np.ndarray], f64_tolerance: float = 1e-12
) -> None:
    """The parity rule: float64 within 1e-12 (max abs; ``f64_tolerance`` where a module says why it needs
    more); float32 within 1e-5 relative of the peer's float32 run.

    Where the peer's own float32 run is off its exact trajectory by more (PyTorch rounds
    ``1 - lr wd`` to float32 every step), ``exact()`` -- the peer's float64 run from the same
    start -- is the reference, and ours must be within 1e-5 of it and no farther than the peer.
    """
    assert actual.dtype == dtype
    if np.dtype(dtype) == np.float64:
        assert max_abs_diff(actual, expected) <= f64_tolerance
    elif max_rel_diff(actual, expected) > 1e-5:
        reference = exact()
        ours_error, peer_error = max_rel_diff(actual, reference), max_rel_diff(expected, reference)
        assert ours_error <= 1e-5, (ours_error, peer_error)
        assert ours_error <= peer_error, (ours_error, peer_error)


def assert_parity(actual: np.ndarray, expected: np.ndarray, dtype, exact: Callable, **tolerance) -> None:
    """:func:`assert_matches_peer`, after checking that the peer's run moved the params (else parity is vacuous)."""
    assert np.max(np.abs(expected[-1] - expected[0])) > 0.1, "the problem must move the params"
    assert_matches_peer(actual, expected, dtype, exact, **tolerance)


def check_against_peer(ours, peer_run: Callable[[Problem, Any], np.ndarray], steps: int, dtype, **tolerance) -> None:
    """``steps`` jitted steps of the transform ``ours`` follow ``peer_run(problem, dtype)`` (:func:`assert_parity`)."""
    problem = make_problem(dtype)
    expected = peer_run(problem, dtype)
    actual = run_transform(ours, problem, steps, dtype)
    assert_parity(actual, expected, dtype, lambda: peer_run(problem, np.float64), **tolerance)


def case_params(cases: Mapping[str, Any], conventions: Callable[[Any], tuple[str, ...]], fast: Callable[[Any], bool]):
    """``pytest.param(name, convention, id="name-convention")`` for every case and each of its conventions.

    Cases that ``fast`` does not pick are marked slow (CI runs them).
    """
    import pytest

    return [
        pytest.param(name, convention, id=f"{name}-{convention}", marks=() if fast(case) else pytest.mark.slow)
        for name, case in cases.items()
        for convention in conventions(case)
    ]


def grid_params(names, conventions, fast: Callable[[str, Any], bool]):
    """``pytest.param(name, convention, dtype)`` for every name x convention x (float64, float32).

    Ids read ``name-convention-float64``; the (name, dtype) pairs ``fast`` does not pick are marked slow.
    """
    import pytest

    return [
        pytest.param(name, convention, dtype, marks=() if fast(name, dtype) else pytest.mark.slow)
        for name in names
        for convention in conventions
        for dtype in (np.float64, np.float32)
    ]


# --------------------------------------------------------------------------
# Table-driven parity (sgd, adagrad, rmsprop, adadelta, nadam, nadamw, adamax, adamaxw, radam)
# --------------------------------------------------------------------------
# Each test_parity_<family>.py says how the peers spell its optimizers (`Spelling`) and which
# recipes to run (`Variant`); `check_table_case` runs TABLE_STEPS jitted steps of ours and of the
# peer and applies the parity rule of `assert_parity`. Convention defaults (eps, rho, initial
# accumulator, ...) are *not* passed, so they are checked too.

TABLE_STEPS = 300
GAMMA = 0.99  # exponential schedule: lr * GAMMA**t
DECAY = 1e-2  # legacy Keras decay: lr / (1 + DECAY t)
WD = 0.05
CONVENTIONS = ("optax", "torch", "keras")
KERAS_NAMES = {"eps": "epsilon", "b1": "beta_1", "b2": "beta_2"}


@dataclasses.dataclass(frozen=True)
class Spelling:
    """How the peers spell one adamfx optimizer."""

    lr: float  # learning rate of every case
    torch: str | None  # torch.optim class
    keras: str | None  # keras.optimizers class
    optax: Callable  # (learning_rate, **kwargs) -> optax transform
    torch_names: Mapping[str, str] = dataclasses.field(default_factory=dict)  # adamfx kwarg -> torch kwarg
    torch_fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    optax_decays: bool = False  # the optax function takes weight_decay itself (else add_decayed_weights first)
    stand_ins: Mapping[str, tuple[str, Mapping[str, Any]]] = dataclasses.field(
        default_factory=dict
    )  # convention -> (peer, fixed kwargs)


@dataclasses.dataclass(frozen=True)
class Variant:
    kwargs: Mapping[str, Any]  # adamfx keyword arguments (besides learning_rate and convention)
    schedule: bool = False  # learning rate lr * GAMMA**t
    decay: bool = False  # legacy decay DECAY
    only: tuple[str, ...] = CONVENTIONS  # conventions whose peer has the recipe
    fast: bool = False  # runs by default (else marked slow)


def everything(**kwargs) -> Variant:
    """The default-run variant: the given options, an exponential schedule *and* the legacy decay."""
    return Variant(kwargs, schedule=True, decay=True, fast=True)


WEIGHT_DECAY = Variant({"weight_decay": WD})
BASIC = {"plain": Variant({}), "weight_decay": WEIGHT_DECAY, "schedule": Variant({}, schedule=True)}
BASIC |= {"decay": Variant({}, decay=True)}


def table_params(variants: Mapping[str, Mapping[str, Variant]]):
    """``pytest.param(name, variant, convention, id="name-variant-convention")``; the non-fast ones slow."""
    import pytest

    return [
        pytest.param(name, variant_name, convention, id=f"{name}-{variant_name}-{convention}", marks=marks)
        for name, by_name in variants.items()
        for variant_name, variant in by_name.items()
        for convention in variant.only
        for marks in [() if variant.fast else pytest.mark.slow]
    ]


def peer_factor(variant: Variant) -> Callable | None:
    """The peer's multiplier of the base learning rate at step t (from 0), or None."""
    if not (variant.schedule or variant.decay):
        return None
    gamma, decay = (GAMMA if variant.schedule else 1.0), (DECAY if variant.decay else 0.0)
    return lambda t: gamma**t / (1.0 + decay * t)


def torch_case(spelling: Spelling, variant: Variant, fixed: Mapping[str, Any]):
    kwargs = {"lr": spelling.lr, **spelling.torch_fixed, **fixed}
    for name, value in variant.kwargs.items():
        kwargs[spelling.torch_names.get(name, "decoupled_weight_decay" if name == "decoupled" else name)] = value
    if "b1" in kwargs or "b2" in kwargs:
        kwargs["betas"] = (kwargs.pop("b1", 0.9), kwargs.pop("b2", 0.999))
    factor = peer_factor(variant)
    if variant.decay and "decay" in spelling.torch_names:  # Adagrad's own lr_decay
        kwargs[spelling.torch_names["decay"]] = DECAY
        factor = peer_factor(dataclasses.replace(variant, decay=False))
    return kwargs, None if factor is None else ("lambda", factor)


def keras_case(spelling: Spelling, variant: Variant):
    kwargs = {KERAS_NAMES.get(k, k): v for k, v in variant.kwargs.items() if k != "decoupled"}
    factor = peer_factor(variant)
    kwargs["learning_rate"] = spelling.lr if factor is None else keras_schedule(spelling.lr, factor)
    return kwargs


def keras_schedule(lr, factor):
    """``lr * factor(iterations)`` as a Keras LearningRateSchedule, in Keras's floatx."""
    keras = _keras()

    class Schedule(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return lr * factor(keras.ops.cast(step, keras.config.floatx()))

    return Schedule()


def optax_case(spelling: Spelling, variant: Variant):
    kwargs = dict(variant.kwargs)
    factor = peer_factor(variant)
    lr = spelling.lr if factor is None else (lambda count: spelling.lr * factor(count))
    weight_decay = [] if spelling.optax_decays else [optax.add_decayed_weights(kwargs.pop("weight_decay", 0.0))]
    return optax.chain(*weight_decay, spelling.optax(lr, **kwargs))


def table_peer_trajectory(spelling: Spelling, variant: Variant, convention: str, problem: Problem, dtype):
    peer, fixed = spelling.stand_ins.get(convention, (convention, {}))
    if peer == "torch":
        kwargs, scheduler = torch_case(spelling, variant, fixed)
        return run_torch(spelling.torch, kwargs, problem, TABLE_STEPS, dtype, scheduler=scheduler)
    if peer == "keras":
        return run_keras(spelling.keras, keras_case(spelling, variant), problem, TABLE_STEPS, dtype)
    return run_transform(optax_case(spelling, variant), problem, TABLE_STEPS, dtype)


def check_table_case(factory: Callable, spelling: Spelling, variant: Variant, convention: str, dtype) -> None:
    """``factory(convention=convention)`` with ``variant`` follows the peer's trajectory (:func:`assert_parity`)."""
    lr = (lambda count: spelling.lr * GAMMA**count) if variant.schedule else spelling.lr
    decay = DECAY if variant.decay else 0.0
    ours = factory(learning_rate=lr, decay=decay, convention=convention, **variant.kwargs)
    peer = lambda problem, dtype: table_peer_trajectory(spelling, variant, convention, problem, dtype)
    check_against_peer(ours, peer, TABLE_STEPS, dtype)
