"""Parity: adamfx.radam against live torch.optim.RAdam and optax.radam.

The rule and the variants' layout are those of ``test_parity_sgd.py`` (``peers.check_table_case``).
Keras has no RAdam: our ``"keras"`` RAdam is PyTorch's ``RAdam(eps=1e-7,
decoupled_weight_decay=True)`` and is checked against that; only optax has a Nesterov RAdam.
Also: the ``>`` vs ``>=`` threshold, which only shows at the boundary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamfx
from adamfx._src.stages.corrections import sma_lengths
from tests import peers
from tests.peers import WD, Variant, everything

SPELLINGS = {
    "radam": peers.Spelling(
        0.01, "RAdam", None, optax.radam, stand_ins={"keras": ("torch", {"eps": 1e-7, "decoupled_weight_decay": True})}
    ),
}
VARIANTS = {
    "radam": {
        **peers.BASIC,
        "decoupled": Variant({"weight_decay": WD, "decoupled": True}, only=("torch",)),
        "nesterov": Variant({"nesterov": True}, only=("optax",)),
        "all": everything(weight_decay=WD),
    },
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("name", "variant", "convention"), peers.table_params(VARIANTS))
def test_matches_peer(name, variant, convention, dtype):
    peers.check_table_case(getattr(adamfx, name), SPELLINGS[name], VARIANTS[name][variant], convention, dtype)


def test_radam_threshold_boundary():
    """At rho_t == threshold "optax" rectifies (>=) and "torch" does not (>); with eps 0 they are otherwise equal."""
    b2, step = 0.9, 6
    with jax.enable_x64(True):
        _, rho = sma_lengths(jnp.asarray(1 - b2), jnp.asarray(step, jnp.int32))
    threshold = float(rho)  # rho_5 < threshold == rho_6 < rho_7
    problem = peers.make_problem()

    def run(convention, threshold):
        with jax.enable_x64(True):
            tx = adamfx.radam(0.01, b2=b2, eps=0.0, threshold=threshold, convention=convention)
            return peers.run_transform(tx, problem, 10)

    inclusive, strict = run("optax", threshold), run("torch", threshold)
    assert peers.max_abs_diff(inclusive[: step - 1], strict[: step - 1]) < 1e-12  # neither rectifies before
    assert peers.max_abs_diff(inclusive[step - 1], strict[step - 1]) > 1e-4  # only >= rectifies at rho_t == threshold
    assert peers.max_abs_diff(inclusive, run("torch", np.nextafter(threshold, 0))) < 1e-12  # strict, just below
    live = peers.run_transform(optax.radam(0.01, b2=b2, eps=0.0, threshold=np.nextafter(threshold, 0)), problem, 10)
    assert peers.max_abs_diff(inclusive, live) <= 1e-12
