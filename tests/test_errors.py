"""Bad input is rejected with a message naming the argument, the value and what is allowed."""

from __future__ import annotations

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
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


# -- issue 10: porting aids ------------------------------------------------------------------------

PEER_SPELLINGS = [
    (adamfx.adam, {"lr": 1e-3}, "learning_rate"),
    (adamfx.adam, {"betas": (0.9, 0.999)}, r"b1 and b2: adam\(b1=..., b2=...\)"),
    (adamfx.adam, {"beta_1": 0.9}, "b1"),
    (adamfx.adam, {"beta_2": 0.999}, "b2"),
    (adamfx.adam, {"epsilon": 1e-7}, "eps"),
    (adamfx.adamw, {"mask": None}, "weight_decay_mask"),
    (adamfx.rmsprop, {"alpha": 0.99}, "rho"),
    (adamfx.sgd, {"accumulator_dtype": None}, "mu_dtype"),
    (adamfx.nadam, {"decoupled_weight_decay": True}, "decoupled"),
    (adamfx.amsgrad, {"lr": 1e-3}, "learning_rate"),
]


@pytest.mark.parametrize(("factory", "kwargs", "target"), PEER_SPELLINGS, ids=lambda x: getattr(x, "__name__", None))
def test_a_peer_spelling_names_the_adamfx_argument(factory, kwargs, target):
    (name,) = kwargs
    with pytest.raises(
        TypeError, match=rf"^{factory.__name__}\(\) got an unexpected keyword argument '{name}'.*{target}"
    ):
        factory(**kwargs)


def test_an_unknown_keyword_lists_the_arguments_and_a_close_match():
    with pytest.raises(TypeError, match=r"adamw\(\) got .* 'learnin_rate'; did you mean learning_rate\?.*weight_decay"):
        adamfx.adamw(learnin_rate=1e-3)


@pytest.mark.parametrize("factory", [adamfx.rmsprop, adamfx.adadelta])
def test_decay_that_looks_like_rho_warns_naming_rho(factory):
    legacy = r"decay=0.9\) is the legacy learning-rate decay.*did you mean rho=0.9"
    with pytest.warns(adamfx.AdamfxWarning, match=legacy) as record:
        factory(1e-3, decay=0.9)
    assert record[0].filename == __file__  # the warning points at the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        factory(1e-3, decay=1e-4)  # a learning-rate decay: no warning


# -- issue 10: tree and dtype contracts ------------------------------------------------------------


@pytest.mark.parametrize("with_params", [False, True])
@pytest.mark.parametrize("factory", [adamfx.adam, adamfx.sgd, adamfx.rmsprop, adamfx.adagrad])
def test_a_gradient_of_another_shape_names_the_leaf_and_both_shapes(factory, with_params):
    params = {"w": jnp.ones(3), "b": jnp.ones(2)}
    tx = factory(1e-2)
    grads = {"w": jnp.ones((3, 1)), "b": jnp.ones(2)}
    if not with_params and factory is adamfx.sgd:
        pytest.skip("stateless SGD without params has nothing to compare the shapes with")
    with pytest.raises(ValueError, match=r"gradients\['w'\] has shape \(3, 1\), but the .* has \(3,\) there"):
        tx.update(grads, tx.init(params), params if with_params else None)


STORAGES = {
    "int8": dict(mu_dtype="int8", nu_dtype="int8"),
    "factored": dict(nu_dtype="factored"),
    "int8-factored": dict(mu_dtype="int8", nu_dtype="factored"),
    "bf16": dict(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
}


@pytest.mark.parametrize("with_params", [False, True])
@pytest.mark.parametrize("storage", list(STORAGES))
def test_a_gradient_of_another_shape_is_refused_whatever_the_moments_storage(storage, with_params):
    """A (64, 1) gradient would broadcast against a (64, 256) moment; int8's codes and the factored
    row and column means are checked against the parameter's shape as plain moments are."""
    params = {"w": jnp.ones((64, 256)), "b": jnp.ones(3)}  # w is quantized / factored, b kept whole
    tx = adamfx.adam(1e-3, **STORAGES[storage])
    state = tx.init(params)
    for name, wrong in (("w", (64, 1)), ("b", (3, 1))):
        grads = {**jax.tree.map(jnp.ones_like, params), name: jnp.ones(wrong)}
        shape = re.escape(str(params[name].shape))
        pattern = rf"gradients\['{name}'\] has shape \({wrong[0]}, 1\), but the .* has {shape}"
        with pytest.raises(ValueError, match=pattern):
            tx.update(grads, state, params if with_params else None)


@pytest.mark.parametrize("wrong", [(64, 1), (64, 128)])
def test_fused_without_params_says_the_gradients_do_not_match_its_state(wrong):
    """Without params ``fused`` lays its buffers out from the gradients; a leaf of another shape then shows as
    a mismatch of those buffers, which the error says, pointing to the params that name the leaf."""
    params = {"w": jnp.ones((64, 256)), "b": jnp.ones(3)}
    tx = adamfx.fused(adamfx.adam(1e-3))
    state = tx.init(params)
    grads = {"w": jnp.ones(wrong), "b": jnp.ones(3)}
    with pytest.raises(ValueError, match=r"fused: the gradients do not match the state built by init.*pass the params"):
        tx.update(grads, state)
    named = rf"a leaf is float32\[{wrong[0]}, {wrong[1]}\] where the params have float32\[64, 256\]"
    with pytest.raises(ValueError, match=named):
        tx.update(grads, state, params)


@pytest.mark.parametrize("storage", [None, *STORAGES])
def test_an_integer_gradient_for_a_float_parameter_is_refused_not_dropped(storage):
    """With the params given the error names the leaf and both dtypes; without them the stand-in scalar
    that an integer gradient becomes fails the shape check, whose message says why."""
    params = {"w": jnp.ones((64, 256)), "i": jnp.arange(3)}
    tx = adamfx.adam(1e-3, **STORAGES.get(storage, {}))
    state = tx.init(params)
    grads = {"w": jnp.ones((64, 256), jnp.int32), "i": jnp.zeros(3, jnp.int32)}
    with pytest.raises(ValueError, match=r"gradients\['w'\] is int32, but its parameter is float32"):
        tx.update(grads, state, params)
    with pytest.raises(ValueError, match=r"gradients\['w'\] has shape \(\).*a float parameter needs a float gradient"):
        tx.update(grads, state)
    updates, _ = tx.update({**grads, "w": jnp.ones((64, 256))}, state, params)  # the integer leaf itself is fine
    assert not np.any(np.asarray(updates["i"]))


@pytest.mark.parametrize("storage", ["int8", "factored", "bf16"])
def test_a_state_built_by_another_storage_is_refused_naming_it(storage):
    """float32 moments handed to an int8, factored or bfloat16 optimizer: not a KeyError from inside, nor a
    bfloat16 optimizer that goes on keeping float32 moments."""
    params = {"w": jnp.ones((64, 256))}
    tx = adamfx.adam(1e-3, **STORAGES[storage])
    foreign = adamfx.adam(1e-3).init(params)
    with pytest.raises(ValueError, match="was the state built by the init of another optimizer"):
        tx.update(jax.tree.map(jnp.ones_like, params), foreign, params)


def _numpy_adam_nu(grads, b2=0.999):
    nu = np.zeros_like(grads[0], dtype=np.float32)
    for g in grads:
        nu = np.float32(b2) * nu + np.float32(1 - b2) * np.asarray(g, np.float32) ** 2
    return nu


def test_bfloat16_gradients_keep_the_float32_state_of_float32_params():
    """The state's dtypes are fixed by init; the moments are computed from the bf16 values exactly."""
    params = {"w": jnp.ones(4)}
    tx = adamfx.adam(1e-3)
    grads = [jnp.full(4, 1.0, jnp.bfloat16) if t < 3 else jnp.full(4, 30.0, jnp.bfloat16) for t in range(6)]
    state = tx.init(params)
    for g in grads:
        _, state = tx.update({"w": g}, state)
    assert state[0].nu["w"].dtype == jnp.float32 and state[0].mu["w"].dtype == jnp.float32
    np.testing.assert_allclose(state[0].nu["w"], _numpy_adam_nu([np.asarray(g, np.float32) for g in grads]), rtol=1e-6)

    def body(s, g):  # lax.scan needs the carry's type to stay put
        _, s = tx.update({"w": g}, s)
        return s, None

    scanned, _ = jax.lax.scan(body, tx.init(params), jnp.stack(grads))
    np.testing.assert_allclose(scanned[0].nu["w"], state[0].nu["w"], rtol=1e-6)
    guarded = adamfx.apply_if_finite(tx, 3)
    guarded_state = guarded.init(params)
    for g in grads[:2]:
        _, guarded_state = jax.jit(guarded.update)({"w": g}, guarded_state)


def test_float16_params_keep_float32_moments_so_the_step_matches_float32():
    """|g| = 1e-3: g^2 = 1e-6 and (1 - b2) g^2 = 1e-9 are below float16's range; the step must not blow up."""
    steps, lr = 5, 1e-3
    runs = {}
    for dtype in (jnp.float16, jnp.float32):
        params = {"w": jnp.zeros(3, dtype)}
        tx = adamfx.adam(lr)
        state = tx.init(params)
        for _ in range(steps):
            updates, state = tx.update({"w": jnp.full(3, 1e-3, dtype)}, state, params)
        runs[dtype] = np.asarray(updates["w"], np.float64)
        assert state[0].nu["w"].dtype == jnp.float32
    # a constant gradient: m^ / sqrt(v^) = 1, so every step is -lr (NumPy: -lr * g / (|g| + eps))
    expected = -lr * np.float32(np.float16(1e-3)) / (np.float32(np.float16(1e-3)) + 1e-8)
    np.testing.assert_allclose(runs[jnp.float16], expected, rtol=1e-3)
    np.testing.assert_allclose(runs[jnp.float16] / runs[jnp.float32], 1.0, rtol=1e-3)


@pytest.mark.parametrize("factory", [adamfx.sgd, adamfx.adam, lambda lr: adamfx.sgd(lr, momentum=0.9)])
def test_integer_leaves_pass_through_untouched_as_in_optax(factory):
    params = {"w": jnp.ones(2), "i": jnp.arange(2)}
    grads = {"w": jnp.array([0.5, -1.0]), "i": jnp.zeros(2, jnp.int32)}
    tx = factory(0.1)
    updates, _ = tx.update(grads, tx.init(params), params)
    reference = optax.sgd(0.1) if factory is adamfx.sgd else None
    if reference is not None:
        expected, _ = reference.update(grads, reference.init(params), params)
        np.testing.assert_array_equal(updates["w"], expected["w"])
    assert not np.any(np.asarray(updates["i"])) and jnp.issubdtype(updates["i"].dtype, jnp.integer)
    new = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(new["i"], params["i"])
    without, _ = tx.update({"w": grads["w"]}, tx.init({"w": params["w"]}), {"w": params["w"]})
    np.testing.assert_array_equal(updates["w"], without["w"])


def test_a_zero_gradient_with_eps_0_gives_a_zero_step_and_optax_values_elsewhere():
    with jax.enable_x64(True):  # float64: optax's own 1 - b2**t rounding stays far below the tolerance
        params = {"w": jnp.ones(3, jnp.float64)}
        grads = [{"w": jnp.array([0.0, 1.0, -2.0])}, {"w": jnp.array([0.0, 0.5, 3.0])}]
        ours, theirs = adamfx.adam(0.1, eps=0.0), optax.adam(0.1, eps=0.0)
        s1, s2 = ours.init(params), theirs.init(params)
        for g in grads:
            u1, s1 = ours.update(g, s1)
            u2, s2 = theirs.update(g, s2)
            assert np.isnan(u2["w"][0]) and u1["w"][0] == 0  # optax (and PyTorch): 0 / 0
            np.testing.assert_allclose(u1["w"][1:], u2["w"][1:], rtol=1e-14)


def test_keys_with_a_slash_that_collide_with_nesting_restore():
    params = {"a/b": jnp.ones(2), "a": {"b": jnp.ones(3)}}
    tx = adamfx.adam(1e-3)
    state = tx.init(params)
    restored = adamfx.restore_state(tx, params, state)
    assert jax_tree_equal(restored, state)


def jax_tree_equal(a, b) -> bool:
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )
