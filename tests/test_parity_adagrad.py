"""Parity: adamfx.adagrad against live torch.optim.Adagrad, keras.optimizers.Adagrad and optax.adagrad.

The rule and the variants' layout are those of ``test_parity_sgd.py`` (``peers.check_table_case``);
PyTorch's ``lr_decay`` is the legacy decay.
"""

from __future__ import annotations

import numpy as np
import optax
import pytest

import adamfx
from tests import peers
from tests.peers import WD, Variant, everything

SPELLINGS = {"adagrad": peers.Spelling(0.1, "Adagrad", "Adagrad", optax.adagrad, {"decay": "lr_decay"})}
VARIANTS = {
    "adagrad": {
        **peers.BASIC,
        "initial_accumulator": Variant({"initial_accumulator_value": 0.5, "eps": 1e-6}),
        "all": everything(weight_decay=WD),
    },
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("name", "variant", "convention"), peers.table_params(VARIANTS))
def test_matches_peer(name, variant, convention, dtype):
    peers.check_table_case(getattr(adamfx, name), SPELLINGS[name], VARIANTS[name][variant], convention, dtype)
