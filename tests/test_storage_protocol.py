"""The Storage protocol: a new storage is a few lines, works in every stage that keeps a moment, and is checked."""

import dataclasses
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamfx


@dataclasses.dataclass(frozen=True)
class Doubled(adamfx.Storage):
    """A toy codec: keeps ``2 * value`` in float32 (exact), decodes by halving."""

    def encode(self, value, *, default_dtype, key=None):
        return (2 * value).astype(jnp.float32)

    def decode(self, stored, *, dtype):
        return (stored / 2).astype(dtype)


PARAMS = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.array([0.5, -0.25])}


def grads(step):
    return jax.tree.map(lambda p: jnp.sin(3.0 * p + step), PARAMS)


def test_a_new_storage_keeps_adam_moments_exactly():
    """Only encode and decode are written; zeros, store and accumulate come from the base class. The codec is
    exact, so the updates agree with float32 state (itself tested against optax, PyTorch and Keras in
    test_parity_adam.py) to float32 rounding (XLA fuses the two programs differently: 1 ulp seen) and the state
    holds twice the moments."""
    tx, reference = adamfx.adam(1e-2, mu_dtype=Doubled(), nu_dtype=Doubled()), adamfx.adam(1e-2)
    state, ref_state = tx.init(PARAMS), reference.init(PARAMS)
    for step in range(5):
        updates, state = jax.jit(tx.update)(grads(step), state, PARAMS)
        expected, ref_state = jax.jit(reference.update)(grads(step), ref_state, PARAMS)
        for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9)  # 1e-7 lr
    for kept, moment in ((state[0].mu, ref_state[0].mu), (state[0].nu, ref_state[0].nu)):
        for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(moment), strict=True):
            np.testing.assert_allclose(np.asarray(a), 2 * np.asarray(b), rtol=1e-6, atol=1e-9)


def test_a_new_storage_keeps_the_sgd_momentum_buffer():
    tx, reference = adamfx.sgd(0.1, momentum=0.9, mu_dtype=Doubled()), optax.sgd(0.1, momentum=0.9)
    state, ref_state = tx.init(PARAMS), reference.init(PARAMS)
    for step in range(4):
        updates, state = jax.jit(tx.update)(grads(step), state, PARAMS)
        expected, ref_state = reference.update(grads(step), ref_state, PARAMS)
        for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=1e-9)


class Split(NamedTuple):
    high: jax.Array  # the value rounded to bfloat16, parameter-shaped
    low: jax.Array  # what bfloat16 lost, parameter-shaped


@dataclasses.dataclass(frozen=True)
class SplitStorage(adamfx.Storage):
    """A toy storage keeping a record of two arrays (bfloat16 plus its float32 remainder): exact."""

    record: ClassVar[type] = Split

    def encode(self, value, *, default_dtype, key=None):
        high = value.astype(jnp.bfloat16)
        return Split(high, value - high.astype(value.dtype))

    def decode(self, stored, *, dtype):
        return (stored.high.astype(jnp.float32) + stored.low).astype(dtype)


def test_a_record_storage_keeps_adam_moments_and_its_gradients_are_shape_checked():
    """A storage keeping a record of several arrays: the state holds a Split of parameter-shaped trees, the
    moments are float32's (the split is exact), and a gradient of another shape is refused naming the leaf
    by the default ``Storage.shape`` (the record's first field) -- not broadcast against the moment."""
    tx, reference = adamfx.adam(1e-2, mu_dtype=SplitStorage()), adamfx.adam(1e-2)
    state, ref_state = tx.init(PARAMS), reference.init(PARAMS)
    assert isinstance(state[0].mu, Split) and state[0].mu.high["w"].shape == (3, 4)
    for step in range(3):
        updates, state = jax.jit(tx.update)(grads(step), state, PARAMS)
        expected, ref_state = jax.jit(reference.update)(grads(step), ref_state, PARAMS)
        for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match=r"gradients\['w'\] has shape \(3, 1\), but the .* has \(3, 4\)"):
        tx.update({**grads(0), "w": jnp.ones((3, 1))}, state)


def test_storages_share_the_base_class_and_its_flags():
    for storage in (adamfx.FloatStorage(jnp.bfloat16), adamfx.Int8Storage(), adamfx.FactoredStorage(), Doubled()):
        assert isinstance(storage, adamfx.Storage)
    assert adamfx.FloatStorage(jnp.bfloat16).needs_key and not Doubled().needs_key
    assert not adamfx.FactoredStorage().exact_moment and not adamfx.FactoredStorage().elementwise
    assert adamfx.Int8Storage().record is not None and Doubled().record is None


def test_an_object_that_is_not_a_storage_is_rejected_by_name():
    class DuckTyped:
        def encode(self, value, **kw):
            return value

        def decode(self, stored, **kw):
            return stored

    with pytest.raises(ValueError, match=r"mu_dtype=.*Storage"):
        adamfx.adam(1e-3, mu_dtype=DuckTyped())


def test_an_incomplete_storage_names_what_is_missing():
    @dataclasses.dataclass(frozen=True)
    class NoDecode(adamfx.Storage):
        def encode(self, value, *, default_dtype, key=None):
            return value

    tx = adamfx.adam(1e-3, mu_dtype=NoDecode())
    with pytest.raises(NotImplementedError, match="NoDecode must implement decode"):
        tx.update(grads(0), tx.init(PARAMS), PARAMS)
