"""Parity: adamfx.adamax and adamfx.adamaxw against live torch.optim.Adamax, keras.optimizers.Adamax and optax.

The rule and the variants' layout are those of ``test_parity_sgd.py`` (``peers.check_table_case``).
adamaxw: optax's ``adamaxw``; Keras's ``Adamax(weight_decay=...)`` is decoupled already; PyTorch
has no AdamaxW (its ``Adamax`` decays coupled), so ``adamaxw(convention="torch")`` has no live peer
(``registry.NO_PEER``).
"""

from __future__ import annotations

import numpy as np
import optax
import pytest

import adamfx
from tests import peers
from tests.peers import WD, Variant, everything

SPELLINGS = {
    "adamax": peers.Spelling(0.01, "Adamax", "Adamax", optax.adamax),
    "adamaxw": peers.Spelling(0.01, None, "Adamax", optax.adamaxw, optax_decays=True),
}
VARIANTS = {
    "adamax": {
        **peers.BASIC,
        "betas": Variant({"b1": 0.8, "b2": 0.99, "eps": 1e-6}),
        "all": everything(weight_decay=WD),
    },
    "adamaxw": {"all": Variant({"weight_decay": WD}, schedule=True, decay=True, only=("optax", "keras"), fast=True)},
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("name", "variant", "convention"), peers.table_params(VARIANTS))
def test_matches_peer(name, variant, convention, dtype):
    peers.check_table_case(getattr(adamfx, name), SPELLINGS[name], VARIANTS[name][variant], convention, dtype)
