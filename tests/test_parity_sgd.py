"""Parity: adamfx.sgd against live torch.optim.SGD, keras.optimizers.SGD and optax.sgd.

Every case runs ``peers.TABLE_STEPS`` jitted steps of the noisy multi-leaf quadratic of
``tests/peers.py`` (``peers.check_table_case``): float64 within 1e-12 (max abs), float32
within 1e-5 relative of the peer's float32 run or, where that run is itself off its exact
trajectory, of its float64 run and no farther than the peer. The ``"all"`` variant runs by
default, the single-feature ones are slow (CI). optax has no dampening.
"""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

import adamfx
from tests import peers
from tests.peers import WD, Variant, everything


def _optax_sgd(learning_rate, momentum=0.0, nesterov=False):
    return optax.sgd(learning_rate, momentum or None, nesterov)


SPELLINGS = {"sgd": peers.Spelling(0.05, "SGD", "SGD", _optax_sgd)}
VARIANTS = {
    "sgd": {
        "plain": Variant({}),
        "momentum": Variant({"momentum": 0.9}),
        "nesterov": Variant({"momentum": 0.9, "nesterov": True}, schedule=True),
        "dampening": Variant({"momentum": 0.9, "dampening": 0.3}, schedule=True, only=("torch",), fast=True),
        "weight_decay": peers.WEIGHT_DECAY,
        "momentum_schedule": Variant({"momentum": 0.9}, schedule=True),
        "momentum_decay": Variant({"momentum": 0.9}, decay=True),
        "all": everything(momentum=0.9, weight_decay=WD),
    },
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("name", "variant", "convention"), peers.table_params(VARIANTS))
def test_matches_peer(name, variant, convention, dtype):
    peers.check_table_case(getattr(adamfx, name), SPELLINGS[name], VARIANTS[name][variant], convention, dtype)


@pytest.mark.parametrize("name", ["sgd", "rmsprop"])
def test_keras_keeps_the_learning_rate_inside_the_momentum_buffer(name):
    """SGD's and RMSprop's Keras momentum: the same trajectory as PyTorch's while lr is constant
    (given the same eps and rho), not once it changes."""
    problem = peers.make_problem()
    shared = {"momentum": 0.9, **({"rho": 0.9, "eps": 0.0} if name == "rmsprop" else {})}

    def run(convention, learning_rate):
        with jax.enable_x64(True):
            tx = getattr(adamfx, name)(learning_rate, convention=convention, **shared)
            return peers.run_transform(tx, problem, 100)

    schedule = lambda count: 0.01 * 0.9**count
    assert peers.max_abs_diff(run("keras", 0.01), run("torch", 0.01)) < 1e-12
    assert peers.max_abs_diff(run("keras", schedule), run("torch", schedule)) > 1e-3
