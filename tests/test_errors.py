"""Bad input is rejected with a message naming the argument, the value and what is allowed."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

import adamfx

BAD_ARGUMENTS = [
    ({"learning_rate": -1e-3}, r"learning_rate=-0.001 is invalid: .*\[0.0, inf\)"),
    ({"learning_rate": float("nan")}, r"learning_rate=nan is invalid"),
    ({"learning_rate": "fast"}, r"learning_rate='fast' is invalid: .*schedule"),
    ({"b1": 1.0}, r"b1=1.0 is invalid: .*\[0.0, 1.0\)"),
    ({"b1": -0.1}, r"b1=-0.1 is invalid"),
    ({"b2": 1.5}, r"b2=1.5 is invalid"),
    ({"b2": float("nan")}, r"b2=nan is invalid"),
    ({"eps": -1e-8}, r"eps=-1e-08 is invalid: .*\[0.0, inf\)"),
    ({"eps_root": -1.0}, r"eps_root=-1.0 is invalid"),
    ({"decay": -0.5}, r"decay=-0.5 is invalid"),
    ({"weight_decay": -0.5}, r"weight_decay=-0.5 is invalid"),
    ({"convention": "jax"}, r"convention='jax' is invalid: it must be one of 'optax', 'torch', 'keras'"),
    ({"mu_dtype": jnp.int32}, r"mu_dtype=.* is invalid: it must be None, a JAX float dtype"),
    ({"mu_dtype": "factored"}, r"mu_dtype=.* is invalid: only a second moment"),
]


@pytest.mark.parametrize("factory", [adamfx.adam, adamfx.adamw, adamfx.amsgrad])
@pytest.mark.parametrize(("kwargs", "message"), BAD_ARGUMENTS)
def test_bad_hyperparameters_raise_at_construction(factory, kwargs, message):
    with pytest.raises(ValueError, match=message):
        factory(**kwargs)


def test_mask_with_wrong_structure_raises_at_init_showing_both():
    tx = adamfx.adamw(1e-3, weight_decay_mask={"w": True})
    with pytest.raises(ValueError, match=r"weight_decay_mask does not match the params(.|\n)*'b'"):
        tx.init({"w": jnp.ones(2), "b": jnp.ones(2)})


def test_gradients_with_another_structure_show_both_structures():
    tx = adamfx.adam(1e-3)
    state = tx.init({"w": jnp.ones(2), "b": jnp.ones(2)})
    with pytest.raises(ValueError, match=r"gradients do not match(.|\n)*gradients: .*'w'(.|\n)*state.*'b'"):
        tx.update({"w": jnp.ones(2)}, state)


def test_weight_decay_without_params_says_what_is_missing():
    tx = adamfx.adamw(1e-3)
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match="weight decay needs the params"):
        tx.update(params, tx.init(params))


def test_set_hyperparams_rejects_unknown_names_listing_valid_ones():
    state = adamfx.adam(1e-3).init({"w": jnp.ones(2)})
    with pytest.raises(KeyError, match=r"unknown hyperparameter\(s\) \['lr'\].*'learning_rate'"):
        adamfx.set_hyperparams(state, lr=1e-4)
    with pytest.raises(ValueError, match=r"b2=1.0 is invalid"):
        adamfx.set_hyperparams(state, b2=1.0)
