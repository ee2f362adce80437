"""Parity: adam / adamw / amsgrad against live torch.optim, keras.optimizers and optax.

Every case runs 300 jitted steps of the noisy multi-leaf quadratic from
``tests/peers.py``: float64 must agree to <= 1e-12 (max abs), float32 to
<= 1e-5 (relative, see ``peers.max_rel_diff``). Defaults (eps, weight decay)
are *not* passed, so the conventions' defaults are checked too.
"""

from __future__ import annotations

import numpy as np
import optax
import pytest

import adamfx
from tests import peers

STEPS = 300
LR = 1e-2
GAMMA = 0.99  # exponential schedule: lr * GAMMA**t
DECAY = 1e-2  # legacy Keras decay: lr / (1 + DECAY t)
WD = 0.05


def exponential(count):
    return LR * GAMMA**count


def inverse_time(step):
    return 1.0 / (1.0 + DECAY * step)


# variant -> (adamfx kwargs, torch (ctor kwargs, scheduler), keras (ctor kwargs, schedule))
VARIANTS = {
    "plain": ({}, ({}, None), ({}, None)),
    "weight_decay": ({"weight_decay": WD}, ({"weight_decay": WD}, None), ({"weight_decay": WD}, None)),
    "amsgrad": ({"amsgrad": True}, ({"amsgrad": True}, None), ({"amsgrad": True}, None)),
    "decay": ({"decay": DECAY}, ({}, ("lambda", inverse_time)), ({}, ("inverse_time", DECAY))),
    "schedule": ({"learning_rate": exponential}, ({}, ("exponential", GAMMA)), ({}, ("exponential", GAMMA))),
}


def optax_peer(variant: str, optimizer: str):
    """The optax chain a user of optax would write for the same recipe."""
    lr = {"decay": lambda c: LR * inverse_time(c), "schedule": exponential}.get(variant, LR)
    amsgrad = optimizer == "amsgrad" or variant == "amsgrad"
    coupled = [optax.add_decayed_weights(WD)] if variant == "weight_decay" and optimizer != "adamw" else []
    decoupled = [optax.add_decayed_weights(WD)] if optimizer == "adamw" else []
    moments = optax.scale_by_amsgrad() if amsgrad else optax.scale_by_adam()
    return optax.chain(*coupled, moments, *decoupled, optax.scale_by_learning_rate(lr))


def torch_peer(variant: str, optimizer: str):
    kwargs, scheduler = VARIANTS[variant][1]
    name = {"adamw": "AdamW"}.get(optimizer, "Adam")
    kwargs = {"lr": LR, **kwargs, **({"amsgrad": True} if optimizer == "amsgrad" else {})}
    if optimizer == "adamw":
        kwargs["weight_decay"] = WD
    return name, kwargs, scheduler


def keras_peer(variant: str, optimizer: str):
    kwargs, schedule = VARIANTS[variant][2]
    name = {"adamw": "AdamW"}.get(optimizer, "Adam")
    kwargs = {"learning_rate": LR, **kwargs, **({"amsgrad": True} if optimizer == "amsgrad" else {})}
    if optimizer == "adamw":
        kwargs["weight_decay"] = WD
    return name, kwargs, schedule


def ours(optimizer: str, variant: str, convention: str):
    kwargs = {"learning_rate": LR, **VARIANTS[variant][0], "convention": convention}
    if optimizer == "adamw":
        kwargs.setdefault("weight_decay", WD)
    return getattr(adamfx, optimizer)(**kwargs)


def peer_trajectory(convention, optimizer, variant, problem, dtype):
    if convention == "torch":
        name, kwargs, scheduler = torch_peer(variant, optimizer)
        return peers.run_torch(name, kwargs, problem, STEPS, dtype, scheduler=scheduler)
    if convention == "keras":
        name, kwargs, schedule = keras_peer(variant, optimizer)
        return peers.run_keras(name, kwargs, problem, STEPS, dtype, schedule=schedule)
    return peers.run_transform(optax_peer(variant, optimizer), problem, STEPS, dtype)


CASES = [
    (optimizer, variant, convention)
    for optimizer in ("adam", "adamw", "amsgrad")
    for variant in VARIANTS
    for convention in ("optax", "torch", "keras")
    if not (optimizer == "adamw" and variant == "weight_decay")  # adamw always decays
    if not (optimizer == "amsgrad" and variant == "amsgrad")
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("optimizer", "variant", "convention"), CASES)
def test_matches_peer(optimizer, variant, convention, dtype):
    problem = peers.make_problem(dtype)
    expected = peer_trajectory(convention, optimizer, variant, problem, dtype)
    actual = peers.run_transform(ours(optimizer, variant, convention), problem, STEPS, dtype)
    assert actual.dtype == dtype
    assert np.max(np.abs(expected[-1] - expected[0])) > 0.1, "the problem must move the params"
    if dtype == np.float64:
        assert peers.max_abs_diff(actual, expected) <= 1e-12
    else:
        assert peers.max_rel_diff(actual, expected) <= 1e-5


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("eps_hat", [False, True], ids=["algorithm1", "section2"])
def test_matches_numpy_transcription_of_the_paper(eps_hat, dtype):
    """Algorithm 1 is torch/optax's Adam; the Sec. 2 reordering (eps on sqrt(v)) is Keras's."""
    problem = peers.make_problem(dtype)
    expected = peers.numpy_adam(problem, STEPS, lr=LR, eps=1e-8, dtype=dtype, eps_hat=eps_hat)
    tx = adamfx.adam(LR, eps=1e-8, convention="keras" if eps_hat else "torch")
    actual = peers.run_transform(tx, problem, STEPS, dtype)
    if dtype == np.float64:
        assert peers.max_abs_diff(actual, expected) <= 1e-12
    else:
        assert peers.max_rel_diff(actual, expected) <= 1e-5


def test_conventions_really_differ():
    """The parity above would be vacuous if the conventions agreed anyway."""
    problem = peers.make_problem(np.float64)
    runs = {c: peers.run_transform(adamfx.amsgrad(LR, eps=1e-3, convention=c), problem, 50) for c in adamfx.CONVENTIONS}
    assert peers.max_abs_diff(runs["torch"], runs["keras"]) > 1e-6
    assert peers.max_abs_diff(runs["torch"], runs["optax"]) > 1e-6
