"""The peers' options that users port, each against the live peer.

- PyTorch's ``maximize`` (the full PyTorch grid is ``tests/test_torch_grid.py``);
  here under the other conventions, against Keras fed ``-g`` and optax chained after ``optax.scale(-1)``.
- optax's weight-decay schedules (``adamw``, ``nadamw``, ``adamaxw``, ``adadelta``).
- optax's ``adam``/``adamw(nesterov=True)``, ``nadam``/``nadamw(nesterov=False)``,
  ``amsgrad(bias_correction_mu=, bias_correction_nu=)``, ``rmsprop(initial_scale=,
  eps_in_sqrt=, bias_correction=)`` and ``adamaxw``.
- Keras's ``clipnorm`` (per variable), ``clipvalue``, ``global_clipnorm`` and
  ``loss_scale_factor`` on every Keras optimizer adamfx has.
- The Keras rule for ``nesterov=True`` with momentum 0: plain SGD/RMSprop under
  ``"keras"`` and ``"optax"``, an error under ``"torch"`` (as in PyTorch).

Every case runs ``STEPS`` jitted steps of the noisy multi-leaf quadratic of
``tests/peers.py``: float64 within 1e-12 (max abs), float32 within 1e-5 relative
(``peers.max_rel_diff``) of the peer's float32 run -- or, where that run is itself
off its exact trajectory, of the peer's float64 run, and no farther than the peer.
The cases marked fast run by default; the rest are ``slow``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamfx
from tests import peers

STEPS = 300
F64_TOLERANCE = 1e-12
DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])


@dataclasses.dataclass(frozen=True)
class Case:
    ours: Callable[[], optax.GradientTransformation]  # the adamfx optimizer
    peer: Callable[[peers.Problem, type], np.ndarray]  # (problem, dtype) -> the live peer's trajectory
    fast: bool = False


def optax_peer(make: Callable[[], optax.GradientTransformation]):
    return lambda problem, dtype: peers.run_transform(make(), problem, STEPS, dtype)


def keras_peer(name: str, **kwargs):
    return lambda problem, dtype: peers.run_keras(name, kwargs, problem, STEPS, dtype)


def params(cases: dict[str, Case]):
    return [pytest.param(name, id=name, marks=() if case.fast else pytest.mark.slow) for name, case in cases.items()]


def check(case: Case, dtype) -> None:
    problem = peers.make_problem(dtype)
    expected = case.peer(problem, dtype)
    actual = peers.run_transform(case.ours(), problem, STEPS, dtype)
    assert np.max(np.abs(expected[-1] - expected[0])) > 0.1, "the problem must move the params"
    peers.assert_matches_peer(actual, expected, dtype, lambda: case.peer(problem, np.float64))


# --------------------------------------------------------------------------
# optax's options and weight-decay schedules
# --------------------------------------------------------------------------

LR = 0.01
WD_SCHEDULE = optax.linear_schedule(0.2, 0.01, 150)  # moves during the run, then holds
MASK = {"b": False, "s": True, "w": True}

OPTAX_CASES = {
    "adam-nesterov": Case(
        lambda: adamfx.adam(LR, nesterov=True), optax_peer(lambda: optax.adam(LR, nesterov=True)), fast=True
    ),
    "adamw-nesterov": Case(
        lambda: adamfx.adamw(LR, weight_decay=0.05, nesterov=True),
        optax_peer(lambda: optax.adamw(LR, weight_decay=0.05, nesterov=True)),
    ),
    "nadam-no-nesterov": Case(
        lambda: adamfx.nadam(LR, nesterov=False), optax_peer(lambda: optax.nadam(LR, nesterov=False)), fast=True
    ),
    "nadamw-no-nesterov": Case(
        lambda: adamfx.nadamw(LR, weight_decay=0.05, nesterov=False),
        optax_peer(lambda: optax.nadamw(LR, weight_decay=0.05, nesterov=False)),
    ),
    **{
        f"amsgrad-bias-correction-mu{int(mu)}-nu{int(nu)}": Case(
            lambda mu=mu, nu=nu: adamfx.amsgrad(LR, bias_correction_mu=mu, bias_correction_nu=nu),
            optax_peer(lambda mu=mu, nu=nu: optax.amsgrad(LR, bias_correction_mu=mu, bias_correction_nu=nu)),
            fast=not (mu or nu),
        )
        for mu in (True, False)
        for nu in (True, False)
        if not (mu and nu)
    },
    **{
        f"rmsprop-{name}": Case(
            lambda kwargs=kwargs: adamfx.rmsprop(LR, **kwargs),
            optax_peer(lambda kwargs=kwargs: optax.rmsprop(LR, **kwargs)),
            fast=fast,
        )
        for name, kwargs, fast in [
            ("initial-scale", {"initial_scale": 0.5}, False),
            ("eps-outside-sqrt", {"eps_in_sqrt": False, "eps": 1e-3}, False),
            ("bias-correction", {"bias_correction": True}, False),
            ("centered-bias-correction", {"centered": True, "bias_correction": True, "initial_scale": 0.5}, False),
            (
                "all",
                {
                    "centered": True,
                    "initial_scale": 0.5,
                    "eps_in_sqrt": False,
                    "bias_correction": True,
                    "momentum": 0.9,
                    "nesterov": True,
                },
                True,
            ),
        ]
    },
    "adamaxw": Case(
        lambda: adamfx.adamaxw(LR, weight_decay=0.05), optax_peer(lambda: optax.adamaxw(LR, weight_decay=0.05))
    ),
    "adamaxw-default-decay": Case(lambda: adamfx.adamaxw(LR), optax_peer(lambda: optax.adamaxw(LR))),
    # weight_decay as a schedule (optax reads it at the count of steps taken, from 0)
    "adamw-wd-schedule": Case(
        lambda: adamfx.adamw(LR, weight_decay=WD_SCHEDULE, weight_decay_mask=MASK),
        optax_peer(lambda: optax.adamw(LR, weight_decay=WD_SCHEDULE, mask=MASK)),
        fast=True,
    ),
    "nadamw-wd-schedule": Case(
        lambda: adamfx.nadamw(LR, weight_decay=WD_SCHEDULE),
        optax_peer(lambda: optax.nadamw(LR, weight_decay=WD_SCHEDULE)),
    ),
    "adamaxw-wd-schedule": Case(
        lambda: adamfx.adamaxw(LR, weight_decay=WD_SCHEDULE),
        optax_peer(lambda: optax.adamaxw(LR, weight_decay=WD_SCHEDULE)),
    ),
    "adadelta-wd-schedule": Case(
        lambda: adamfx.adadelta(2.0, weight_decay=WD_SCHEDULE),
        optax_peer(lambda: optax.adadelta(2.0, weight_decay=WD_SCHEDULE)),
        fast=True,
    ),
    # maximize under "optax": optax's own optimizer after optax.scale(-1)
    "adam-maximize-l2": Case(
        lambda: adamfx.adam(LR, weight_decay=0.05, maximize=True),
        optax_peer(lambda: optax.chain(optax.scale(-1.0), optax.add_decayed_weights(0.05), optax.adam(LR))),
        fast=True,
    ),
    "adamw-maximize": Case(
        lambda: adamfx.adamw(LR, weight_decay=0.05, maximize=True),
        optax_peer(lambda: optax.chain(optax.scale(-1.0), optax.adamw(LR, weight_decay=0.05))),
    ),
}


@DTYPES
@pytest.mark.parametrize("name", params(OPTAX_CASES))
def test_optax_options(name, dtype):
    check(OPTAX_CASES[name], dtype)


def test_weight_decay_schedule_state_counts_steps():
    """The schedule is read at the count of steps taken: after 3 steps the next read is wd(3)."""
    seen = []

    def schedule(count):
        seen.append(count)
        return 0.1 * count

    tx = adamfx.add_decayed_weights(schedule)
    p = {"w": jnp.ones(2)}
    state = tx.init(p)
    for _ in range(3):
        updates, state = tx.update({"w": jnp.zeros(2)}, state, p)
    np.testing.assert_allclose(updates["w"], 0.1 * 2 * np.ones(2))
    assert int(state.count) == 3


@pytest.mark.parametrize(
    ("name", "kwargs", "convention"),
    [
        ("sgd", {"momentum": 0.9}, "keras"),  # the decay bypasses the buffer (decoupled_weight_decay)
        ("adam", {}, "torch"),  # coupled L2 before the moments
        ("rmsprop", {"momentum": 0.5}, "optax"),
    ],
)
def test_constant_weight_decay_schedule_is_the_number(name, kwargs, convention):
    """Where no peer takes a schedule, a constant one must still be the number, in every placement."""
    problem = peers.make_problem(np.float64)
    number = getattr(adamfx, name)(0.01, weight_decay=0.05, convention=convention, **kwargs)
    schedule = getattr(adamfx, name)(0.01, weight_decay=lambda count: 0.05, convention=convention, **kwargs)
    np.testing.assert_array_equal(peers.run_transform(schedule, problem, 20), peers.run_transform(number, problem, 20))


def test_option_conflicts_raise():
    with pytest.raises(ValueError, match="momentum_decay"):
        adamfx.nadam(nesterov=False, momentum_decay=4e-3)
    with pytest.raises(ValueError, match="bias_correction_mu"):
        adamfx.adam(nesterov=True, bias_correction_mu=False)
    with pytest.raises(ValueError, match="only one of clipnorm, clipvalue and global_clipnorm"):
        adamfx.sgd(0.1, clipnorm=1.0, clipvalue=1.0)
    with pytest.raises(ValueError, match="clipnorm=0"):
        adamfx.adam(clipnorm=0)
    with pytest.raises(ValueError, match="loss_scale_factor=-1"):
        adamfx.adam(loss_scale_factor=-1.0)
    with pytest.raises(TypeError, match="maximize"):
        adamfx.adam(maximize="yes")


# --------------------------------------------------------------------------
# Keras's gradient options, on every Keras optimizer adamfx has
# --------------------------------------------------------------------------

#: adamfx name -> (Keras class, keyword arguments both sides take, learning rate)
KERAS_OPTIMIZERS = {
    "sgd": ("SGD", {"momentum": 0.9}, 0.05),
    "adam": ("Adam", {}, 0.01),
    "adamw": ("AdamW", {"weight_decay": 0.05}, 0.01),
    "rmsprop": ("RMSprop", {"momentum": 0.5}, 0.01),
    "adagrad": ("Adagrad", {}, 0.1),
    "adadelta": ("Adadelta", {}, 2.0),
    "nadam": ("Nadam", {}, 0.01),
    "adamax": ("Adamax", {}, 0.01),
}
KERAS_OPTIONS = {
    "clipnorm": {"clipnorm": 1.0},  # per leaf; the leaves' norms lie on both sides of it during the run
    "clipvalue": {"clipvalue": 0.5},
    "global_clipnorm": {"global_clipnorm": 2.0},
    "loss_scale+clipnorm": {"loss_scale_factor": 4.0, "clipnorm": 0.3},  # unscaled before it is clipped
}
KERAS_FAST = {
    ("adam", "clipnorm"),
    ("sgd", "loss_scale+clipnorm"),
    ("adamw", "global_clipnorm"),
    ("rmsprop", "clipvalue"),
}


def keras_option_case(name: str, option: str) -> Case:
    keras_name, kwargs, lr = KERAS_OPTIMIZERS[name]
    options = KERAS_OPTIONS[option]
    return Case(
        lambda: getattr(adamfx, name)(lr, convention="keras", **kwargs, **options),
        keras_peer(keras_name, learning_rate=lr, **kwargs, **options),
        fast=(name, option) in KERAS_FAST,
    )


KERAS_CASES = {
    f"{name}-{option}": keras_option_case(name, option) for name in KERAS_OPTIMIZERS for option in KERAS_OPTIONS
}


@DTYPES
@pytest.mark.parametrize("name", params(KERAS_CASES))
def test_keras_gradient_options(name, dtype):
    check(KERAS_CASES[name], dtype)


@pytest.mark.parametrize("steps", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_clipping_after_gradient_accumulation_as_keras(steps):
    """Keras unscales each micro-batch gradient, averages them, then clips once per real step:
    ``multi_steps`` around the optimizer (whose chain unscales and clips) is the same."""
    options = {"clipnorm": 0.5, "loss_scale_factor": 3.0}
    problem = peers.make_problem(np.float64)
    keras_kwargs = {"learning_rate": 0.05, "gradient_accumulation_steps": steps, **options}
    expected = peers.run_keras("Adam", keras_kwargs, problem, 60)
    tx = adamfx.multi_steps(adamfx.adam(0.05, convention="keras", **options), steps)
    assert peers.max_abs_diff(peers.run_transform(tx, problem, 60), expected) <= F64_TOLERANCE


def test_clipping_with_ema_as_keras():
    """Keras's EMA averages the params after the clipped step: ``with_ema`` around the clipped optimizer."""
    options = {"global_clipnorm": 1.0, "loss_scale_factor": 2.0}
    problem = peers.make_problem(np.float64)
    keras_kwargs = {"learning_rate": 0.05, "use_ema": True, "ema_momentum": 0.8, "ema_overwrite_frequency": 5}
    expected = peers.run_keras("Adam", {**keras_kwargs, **options}, problem, 40)
    tx = adamfx.with_ema(adamfx.adam(0.05, convention="keras", **options), ema_momentum=0.8, ema_overwrite_frequency=5)
    # p + (ema - p) may differ from ema by one rounding on overwrite steps (as in test_wrappers)
    np.testing.assert_allclose(peers.run_transform(tx, problem, 40), expected, rtol=1e-13, atol=1e-15)


def test_per_leaf_clipnorm_is_not_global():
    """Keras's clipnorm clips each leaf by its own norm: on two leaves it differs from the global clip."""
    grads = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.3, 0.4])}
    per_leaf, _ = adamfx.clip_by_norm_per_leaf(1.0).update(grads, adamfx.clip_by_norm_per_leaf(1.0).init(grads))
    np.testing.assert_allclose(per_leaf["a"], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(per_leaf["b"], [0.3, 0.4], rtol=1e-6)
    global_, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
    assert not np.allclose(global_["b"], per_leaf["b"])


@dataclasses.dataclass(frozen=True)
class AscendingProblem(peers.Problem):
    """The problem with its gradient negated: a descending peer on it ascends the original."""

    def grad(self, params, step):
        return {k: -g for k, g in super().grad(params, step).items()}


def test_maximize_under_keras_is_keras_on_the_negated_gradient():
    problem = peers.make_problem(np.float64)
    ascending = AscendingProblem(**dataclasses.asdict(problem))
    expected = peers.run_keras("AdamW", {"learning_rate": 0.01, "weight_decay": 0.05}, ascending, STEPS)
    actual = peers.run_transform(
        adamfx.adamw(0.01, weight_decay=0.05, maximize=True, convention="keras"), problem, STEPS
    )
    assert peers.max_abs_diff(actual, expected) <= F64_TOLERANCE


def test_fused_takes_the_elementwise_gradient_stages_and_refuses_clipnorm():
    tx = adamfx.adam(0.01, maximize=True, clipvalue=0.5, loss_scale_factor=2.0, convention="keras")
    problem = peers.make_problem(np.float64)
    expected = peers.run_transform(tx, problem, 20)
    assert peers.max_abs_diff(peers.run_transform(adamfx.fused(tx), problem, 20), expected) <= F64_TOLERANCE
    for clipping in ({"clipnorm": 1.0}, {"global_clipnorm": 1.0}):
        with pytest.raises(ValueError, match="not elementwise"):
            adamfx.fused(adamfx.adam(0.01, **clipping))


# --------------------------------------------------------------------------
# nesterov=True with momentum 0
# --------------------------------------------------------------------------

NESTEROV_CASES = {
    "sgd-keras": Case(
        lambda: adamfx.sgd(0.05, nesterov=True, convention="keras"),
        keras_peer("SGD", learning_rate=0.05, momentum=0.0, nesterov=True),
        fast=True,
    ),
    "sgd-optax-momentum-none": Case(
        lambda: adamfx.sgd(0.05, nesterov=True), optax_peer(lambda: optax.sgd(0.05, None, nesterov=True)), fast=True
    ),
    "sgd-optax-momentum-0": Case(
        lambda: adamfx.sgd(0.05, 0.0, nesterov=True), optax_peer(lambda: optax.sgd(0.05, 0.0, nesterov=True))
    ),
    "rmsprop-optax": Case(
        lambda: adamfx.rmsprop(0.01, nesterov=True), optax_peer(lambda: optax.rmsprop(0.01, nesterov=True)), fast=True
    ),
    # Keras's RMSprop has no nesterov: the plain Keras RMSprop
    "rmsprop-keras": Case(
        lambda: adamfx.rmsprop(0.01, nesterov=True, convention="keras"), keras_peer("RMSprop", learning_rate=0.01)
    ),
}


@DTYPES
@pytest.mark.parametrize("name", params(NESTEROV_CASES))
def test_nesterov_without_momentum_is_plain(name, dtype):
    check(NESTEROV_CASES[name], dtype)


def test_nesterov_without_momentum_is_refused_under_torch_as_by_torch():
    import torch

    with pytest.raises(ValueError, match="Nesterov"):
        torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1, momentum=0.0, nesterov=True)
    with pytest.raises(ValueError, match="nesterov"):
        adamfx.sgd(0.1, nesterov=True, convention="torch")
    with pytest.raises(ValueError, match="nesterov"):
        adamfx.rmsprop(0.1, nesterov=True, convention="torch")
