"""Parity: adamfx.rmsprop and adamfx.adadelta against live torch.optim, keras.optimizers and optax.

The rule and the variants' layout are those of ``test_parity_sgd.py`` (``peers.check_table_case``);
only optax has a Nesterov RMSprop. Also: why adamfx does not copy optax.adadelta's default
learning rate.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamfx
from tests import peers
from tests.peers import WD, Variant, everything


def _optax_rmsprop(learning_rate, rho=0.9, momentum=0.0, **kwargs):
    return optax.rmsprop(learning_rate, decay=rho, momentum=momentum or None, **kwargs)


SPELLINGS = {
    "rmsprop": peers.Spelling(0.01, "RMSprop", "RMSprop", _optax_rmsprop, {"rho": "alpha"}),
    "adadelta": peers.Spelling(2.0, "Adadelta", "Adadelta", optax.adadelta),
}
VARIANTS = {
    "rmsprop": {
        **peers.BASIC,
        "rho": Variant({"rho": 0.95, "eps": 1e-6}),
        "centered": Variant({"centered": True}),
        "momentum": Variant({"momentum": 0.9}),
        "momentum_schedule": Variant({"momentum": 0.9, "weight_decay": WD}, schedule=True),
        "nesterov": Variant({"momentum": 0.9, "nesterov": True}, schedule=True, only=("optax",)),
        "all": everything(centered=True, momentum=0.9, weight_decay=WD),
    },
    "adadelta": {**peers.BASIC, "rho": Variant({"rho": 0.8, "eps": 1e-5}), "all": everything(weight_decay=WD)},
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("name", "variant", "convention"), peers.table_params(VARIANTS))
def test_matches_peer(name, variant, convention, dtype):
    peers.check_table_case(getattr(adamfx, name), SPELLINGS[name], VARIANTS[name][variant], convention, dtype)


def test_optax_adadelta_default_learning_rate_climbs():
    """Why adamfx does not copy optax.adadelta's default ``learning_rate=None``: it steps up the gradient."""
    params = jnp.ones(2)
    updates, _ = optax.adadelta().update(2 * params, optax.adadelta().init(params), params)
    assert bool(jnp.all(updates > 0))
    ours, _ = adamfx.adadelta().update(2 * params, adamfx.adadelta().init(params), params)
    assert bool(jnp.all(ours < 0))
