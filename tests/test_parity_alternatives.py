"""Parity: sgd, adagrad, rmsprop, adadelta, nadam, nadamw, adamax, radam against the live peers.

Every case runs 300 jitted steps of the noisy multi-leaf quadratic from
``tests/peers.py`` with ``convention=<peer>`` on our side: float64 must agree
to <= 1e-12 (max abs), float32 to <= 1e-5 (relative, ``peers.max_rel_diff``)
with the peer's float32 run -- or, where that run is itself off its exact
(float64) trajectory, with the exact one, at least as closely as the peer.
Convention defaults (eps, rho, initial accumulator, ...) are *not* passed, so
they are checked too. One registry drives every case: ``OPTIMIZERS`` says how
each peer spells an optimizer, ``VARIANTS`` which recipes to run. The
``"all"`` variant of every optimizer (everything at once: weight decay,
momentum, an exponential schedule *and* the legacy decay) runs by default;
the single-feature variants are marked slow (CI runs them).

Peers that lack a recipe are skipped by the registry: Keras has no RAdam (our
``"keras"`` RAdam is PyTorch's ``RAdam(eps=1e-7, decoupled_weight_decay=True)``
and is checked against that), optax has no dampening and no decoupled Nadam
outside ``nadamw``, only optax has a Nesterov RMSprop or RAdam.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import optax
import pytest

import adamfx
from tests import peers

STEPS = 300
GAMMA = 0.99  # exponential schedule: lr * GAMMA**t
DECAY = 1e-2  # legacy Keras decay: lr / (1 + DECAY t)
WD = 0.05
CONVENTIONS = ("optax", "torch", "keras")
F64_TOLERANCE = 1e-12  # max abs difference over the whole trajectory
F32_TOLERANCE = 1e-5  # max relative difference (peers.max_rel_diff)


def _optax_sgd(learning_rate, momentum=0.0, nesterov=False):
    return optax.sgd(learning_rate, momentum or None, nesterov)


def _optax_rmsprop(learning_rate, rho=0.9, momentum=0.0, **kwargs):
    return optax.rmsprop(learning_rate, decay=rho, momentum=momentum or None, **kwargs)


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """How the peers spell one adamfx optimizer."""

    lr: float  # learning rate of every case
    torch: str | None  # torch.optim class
    keras: str | None  # keras.optimizers class
    optax: Callable  # (learning_rate, **kwargs) -> optax transform
    torch_names: Mapping[str, str] = dataclasses.field(default_factory=dict)  # adamfx kwarg -> torch kwarg
    torch_fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    optax_decays: bool = False  # the optax function takes weight_decay itself (else add_decayed_weights first)


OPTIMIZERS = {
    "sgd": Optimizer(0.05, "SGD", "SGD", _optax_sgd),
    "adagrad": Optimizer(0.1, "Adagrad", "Adagrad", optax.adagrad, {"decay": "lr_decay"}),
    "rmsprop": Optimizer(0.01, "RMSprop", "RMSprop", _optax_rmsprop, {"rho": "alpha"}),
    "adadelta": Optimizer(2.0, "Adadelta", "Adadelta", optax.adadelta),
    "nadam": Optimizer(0.01, "NAdam", "Nadam", optax.nadam),
    "nadamw": Optimizer(
        0.01, "NAdam", "Nadam", optax.nadamw, torch_fixed={"decoupled_weight_decay": True}, optax_decays=True
    ),
    "adamax": Optimizer(0.01, "Adamax", "Adamax", optax.adamax),
    "radam": Optimizer(0.01, "RAdam", None, optax.radam),
}
# Keras has no RAdam: its convention is PyTorch's RAdam with Keras's eps and decoupled weight decay.
STAND_INS = {("radam", "keras"): ("torch", {"eps": 1e-7, "decoupled_weight_decay": True})}


@dataclasses.dataclass(frozen=True)
class Variant:
    kwargs: Mapping[str, Any]  # adamfx keyword arguments (besides learning_rate and convention)
    schedule: bool = False  # learning rate lr * GAMMA**t
    decay: bool = False  # legacy decay DECAY
    only: tuple[str, ...] = CONVENTIONS  # conventions whose peer has the recipe
    fast: bool = False  # runs by default (else marked slow)


def _all(**kwargs):
    return Variant(kwargs, schedule=True, decay=True, fast=True)


WEIGHT_DECAY = Variant({"weight_decay": WD})
SCHEDULE = Variant({}, schedule=True)
DECAYED = Variant({}, decay=True)
BASIC = {"plain": Variant({}), "weight_decay": WEIGHT_DECAY, "schedule": SCHEDULE, "decay": DECAYED}

VARIANTS = {
    "sgd": {
        "plain": Variant({}),
        "momentum": Variant({"momentum": 0.9}),
        "nesterov": Variant({"momentum": 0.9, "nesterov": True}, schedule=True),
        "dampening": Variant({"momentum": 0.9, "dampening": 0.3}, schedule=True, only=("torch",), fast=True),
        "weight_decay": WEIGHT_DECAY,
        "momentum_schedule": Variant({"momentum": 0.9}, schedule=True),
        "momentum_decay": Variant({"momentum": 0.9}, decay=True),
        "all": _all(momentum=0.9, weight_decay=WD),
    },
    "adagrad": {
        **BASIC,
        "initial_accumulator": Variant({"initial_accumulator_value": 0.5, "eps": 1e-6}),
        "all": _all(weight_decay=WD),
    },
    "rmsprop": {
        **BASIC,
        "rho": Variant({"rho": 0.95, "eps": 1e-6}),
        "centered": Variant({"centered": True}),
        "momentum": Variant({"momentum": 0.9}),
        "momentum_schedule": Variant({"momentum": 0.9, "weight_decay": WD}, schedule=True),
        "nesterov": Variant({"momentum": 0.9, "nesterov": True}, schedule=True, only=("optax",)),
        "all": _all(centered=True, momentum=0.9, weight_decay=WD),
    },
    "adadelta": {**BASIC, "rho": Variant({"rho": 0.8, "eps": 1e-5}), "all": _all(weight_decay=WD)},
    "nadam": {
        **BASIC,
        "betas": Variant({"b1": 0.8, "b2": 0.99, "eps": 1e-6}),
        "decoupled": Variant({"weight_decay": WD, "decoupled": True}, only=("torch",), fast=True),
        "momentum_decay": Variant({"momentum_decay": 0.01}, only=("torch",)),
        "all": _all(weight_decay=WD),
    },
    "nadamw": {"all": _all(weight_decay=WD)},
    "adamax": {**BASIC, "betas": Variant({"b1": 0.8, "b2": 0.99, "eps": 1e-6}), "all": _all(weight_decay=WD)},
    "radam": {
        **BASIC,
        "decoupled": Variant({"weight_decay": WD, "decoupled": True}, only=("torch",)),
        "nesterov": Variant({"nesterov": True}, only=("optax",)),
        "all": _all(weight_decay=WD),
    },
}
KERAS_NAMES = {"eps": "epsilon", "b1": "beta_1", "b2": "beta_2"}


def our_learning_rate(lr, variant):
    return (lambda count: lr * GAMMA**count) if variant.schedule else lr


def peer_factor(variant) -> Callable | None:
    """The peer's multiplier of the base learning rate at step t (from 0), or None."""
    if not (variant.schedule or variant.decay):
        return None
    gamma, decay = (GAMMA if variant.schedule else 1.0), (DECAY if variant.decay else 0.0)
    return lambda t: gamma**t / (1.0 + decay * t)


def torch_case(optimizer: Optimizer, variant: Variant, fixed: Mapping[str, Any]):
    kwargs = {"lr": optimizer.lr, **optimizer.torch_fixed, **fixed}
    for name, value in variant.kwargs.items():
        kwargs[optimizer.torch_names.get(name, "decoupled_weight_decay" if name == "decoupled" else name)] = value
    if "b1" in kwargs or "b2" in kwargs:
        kwargs["betas"] = (kwargs.pop("b1", 0.9), kwargs.pop("b2", 0.999))
    factor = peer_factor(variant)
    if variant.decay and "decay" in optimizer.torch_names:  # Adagrad's own lr_decay
        kwargs[optimizer.torch_names["decay"]] = DECAY
        factor = peer_factor(dataclasses.replace(variant, decay=False))
    return kwargs, None if factor is None else ("lambda", factor)


def keras_case(optimizer: Optimizer, variant: Variant):
    kwargs = {KERAS_NAMES.get(k, k): v for k, v in variant.kwargs.items() if k != "decoupled"}
    factor = peer_factor(variant)
    kwargs["learning_rate"] = optimizer.lr if factor is None else keras_schedule(optimizer.lr, factor)
    return kwargs


def keras_schedule(lr, factor):
    """``lr * factor(iterations)`` as a Keras LearningRateSchedule, in Keras's floatx."""
    import keras

    class Schedule(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return lr * factor(keras.ops.cast(step, keras.config.floatx()))

    return Schedule()


def optax_case(optimizer: Optimizer, variant: Variant):
    kwargs = dict(variant.kwargs)
    factor = peer_factor(variant)
    lr = optimizer.lr if factor is None else (lambda count: optimizer.lr * factor(count))
    weight_decay = [] if optimizer.optax_decays else [optax.add_decayed_weights(kwargs.pop("weight_decay", 0.0))]
    return optax.chain(*weight_decay, optimizer.optax(lr, **kwargs))


def peer_trajectory(name, variant, convention, problem, dtype):
    optimizer = OPTIMIZERS[name]
    peer, fixed = STAND_INS.get((name, convention), (convention, {}))
    if peer == "torch":
        kwargs, scheduler = torch_case(optimizer, variant, fixed)
        return peers.run_torch(optimizer.torch, kwargs, problem, STEPS, dtype, scheduler=scheduler)
    if peer == "keras":
        return peers.run_keras(optimizer.keras, keras_case(optimizer, variant), problem, STEPS, dtype)
    return peers.run_transform(optax_case(optimizer, variant), problem, STEPS, dtype)


def ours(name, variant, convention):
    lr = our_learning_rate(OPTIMIZERS[name].lr, variant)
    decay = DECAY if variant.decay else 0.0
    return getattr(adamfx, name)(learning_rate=lr, decay=decay, convention=convention, **variant.kwargs)


CASES = [
    pytest.param(name, variant_name, convention, id=f"{name}-{variant_name}-{convention}", marks=marks)
    for name, variants in VARIANTS.items()
    for variant_name, variant in variants.items()
    for convention in variant.only
    for marks in [() if variant.fast else pytest.mark.slow]
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("name", "variant_name", "convention"), CASES)
def test_matches_peer(name, variant_name, convention, dtype):
    variant = VARIANTS[name][variant_name]
    problem = peers.make_problem(dtype)
    expected = peer_trajectory(name, variant, convention, problem, dtype)
    actual = peers.run_transform(ours(name, variant, convention), problem, STEPS, dtype)
    assert actual.dtype == dtype
    assert np.max(np.abs(expected[-1] - expected[0])) > 0.1, "the problem must move the params"
    if dtype == np.float64:
        assert peers.max_abs_diff(actual, expected) <= F64_TOLERANCE
    elif peers.max_rel_diff(actual, expected) > F32_TOLERANCE:
        # The peer's own float32 run carries its rounding too (PyTorch rounds 1 - lr wd to float32
        # every step, optax's float32 RAdam mixes a float64 rho_inf with a float32 b2^t). Then the
        # reference is the peer's algorithm in exact arithmetic -- its float64 run from the same
        # float32 start -- and ours must be within the tolerance of it and no farther than the peer.
        exact = peer_trajectory(name, variant, convention, problem, np.float64)
        ours_error, peer_error = peers.max_rel_diff(actual, exact), peers.max_rel_diff(expected, exact)
        assert ours_error <= F32_TOLERANCE, (ours_error, peer_error)
        assert ours_error <= peer_error, (ours_error, peer_error)
