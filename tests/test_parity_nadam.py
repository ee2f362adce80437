"""Parity: adamfx.nadam and adamfx.nadamw against live torch.optim.NAdam, keras.optimizers.Nadam and optax.

The rule and the variants' layout are those of ``test_parity_sgd.py`` (``peers.check_table_case``);
optax has no decoupled Nadam outside ``nadamw``, and only PyTorch has ``momentum_decay``.
"""

from __future__ import annotations

import numpy as np
import optax
import pytest

import adamfx
from tests import peers
from tests.peers import WD, Variant, everything

SPELLINGS = {
    "nadam": peers.Spelling(0.01, "NAdam", "Nadam", optax.nadam),
    "nadamw": peers.Spelling(
        0.01, "NAdam", "Nadam", optax.nadamw, torch_fixed={"decoupled_weight_decay": True}, optax_decays=True
    ),
}
VARIANTS = {
    "nadam": {
        **peers.BASIC,
        "betas": Variant({"b1": 0.8, "b2": 0.99, "eps": 1e-6}),
        "decoupled": Variant({"weight_decay": WD, "decoupled": True}, only=("torch",), fast=True),
        "momentum_decay": Variant({"momentum_decay": 0.01}, only=("torch",)),
        "all": everything(weight_decay=WD),
    },
    "nadamw": {"all": everything(weight_decay=WD)},
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("name", "variant", "convention"), peers.table_params(VARIANTS))
def test_matches_peer(name, variant, convention, dtype):
    peers.check_table_case(getattr(adamfx, name), SPELLINGS[name], VARIANTS[name][variant], convention, dtype)
