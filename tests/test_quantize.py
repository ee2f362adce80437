"""Block-wise 8-bit codes: nearest rounding against a NumPy transcription of the code table,
error bounds as properties over random shapes and magnitudes, and unbiased stochastic rounding.

The reference code table is written here from its definition (an 8-bit float
normalised so that the block's absolute maximum is the largest code): the
signed code has a sign bit, 4 exponent and 3 mantissa bits; the unsigned code
5 exponent and 3 mantissa bits; both with subnormals and the top binade [1, 2). The unsigned
code's top value stands for +inf (a second moment whose g^2 overflowed). Below the smallest
normal value the signed code rounds toward zero and the unsigned code away from it.
"""

import functools
import math

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import adamfx
from adamfx._src.storage.int8 import dequantize, n_blocks, quantize
from adamfx._src.storage.protocol import resolve_storage
from tests.test_rounding import assert_unbiased


def code_table(exponent_bits: int, infinity: bool, mantissa_bits: int = 3) -> np.ndarray:
    """All finite magnitudes of the code, ascending, normalised to a maximum of 1 (float64)."""
    bias = 2**exponent_bits - 1
    values = [f * 2.0 ** (1 - bias - mantissa_bits) for f in range(2**mantissa_bits)]
    for e in range(1, 2**exponent_bits):
        values += [(1 + f / 2**mantissa_bits) * 2.0 ** (e - bias) for f in range(2**mantissa_bits)]
    table = np.array(values[:-1] if infinity else values)  # the top unsigned code is +inf
    return table / table[-1]


TABLES = {True: code_table(4, infinity=False), False: code_table(5, infinity=True)}
MANTISSA = 3
MAX_VALUE = {True: 2 - 2.0**-MANTISSA, False: 2 - 2.0 ** (1 - MANTISSA)}  # the largest finite code's value
SMALLEST_NORMAL = {signed: TABLES[signed][2**MANTISSA] for signed in (True, False)}


def block_absmax(x: np.ndarray, block_size: int) -> np.ndarray:
    """Each element's block maximum of ``|x|`` (blocks of the flattened array), flattened."""
    flat = np.abs(x.astype(np.float64).reshape(-1))
    padded = np.pad(flat, (0, -flat.size % block_size)).reshape(-1, block_size)
    return np.repeat(padded.max(axis=1), block_size)[: flat.size]


def reference_nearest(x: np.ndarray, block_size: int, signed: bool) -> np.ndarray:
    """NumPy: per block, the nearest table value times the block's absolute maximum; below the
    smallest normal value the next table value toward zero (signed) or away from it (unsigned)."""
    table = TABLES[signed]
    flat = x.astype(np.float64).reshape(-1)
    if not signed:
        flat = np.maximum(flat, 0)
    absmax = block_absmax(flat, block_size)
    y = np.abs(flat) / np.where(absmax > 0, absmax, 1)
    nearest = table[np.argmin(np.abs(y[:, None] - table[None, :]), axis=1)]
    if signed:
        directed = table[np.searchsorted(table, y, side="right") - 1]
    else:
        directed = table[np.minimum(np.searchsorted(table, y, side="left"), table.size - 1)]
    rounded = np.where(y < SMALLEST_NORMAL[signed], directed, nearest)
    return (np.sign(flat) * rounded * absmax).reshape(x.shape)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _roundtrip(x, block_size, signed, u):
    q = quantize(x, block_size, signed, u)
    return q, dequantize(q, block_size, signed)


def roundtrip(x, block_size, signed, u=None):
    q, value = _roundtrip(jnp.asarray(x), block_size, signed, u)
    return q, np.asarray(value, np.float64)


def magnitudes():
    """float32 values spanning zeros, tiny (1e-30) and huge (1e30) magnitudes of either sign."""
    exponent = st.floats(-30, 30)
    mantissa = st.floats(1, 10, exclude_max=True)
    sign = st.sampled_from([-1.0, 1.0])
    nonzero = st.builds(lambda s, m, e: float(np.float32(s * m * 10.0**e)), sign, mantissa, exponent)
    return st.one_of(st.just(0.0), nonzero)


arrays = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=12),
    elements=magnitudes(),
)
block_sizes = st.sampled_from([1, 3, 16, 64, 256])


def error_bound(x: np.ndarray, block_size: int, signed: bool, steps: float, low_steps: float | None = None):
    """``steps`` code steps: relative ``steps * 2^-M`` in the normal range, ``low_steps`` (default
    ``steps``) absolute ones below it, plus float32 slack."""
    low_steps = steps if low_steps is None else low_steps
    bias = 2 ** (4 if signed else 5) - 1
    flat = np.abs(x.astype(np.float64).reshape(-1))
    subnormal_step = block_absmax(flat, block_size) / MAX_VALUE[signed] * 2.0 ** (1 - bias - MANTISSA)
    bound = steps * flat * 2.0**-MANTISSA + low_steps * subnormal_step * (1 + 2.0**-20) + 8 * 2.0**-24 * flat
    return bound.reshape(x.shape)


@settings(max_examples=80, deadline=None)
@given(x=arrays, block_size=block_sizes, signed=st.booleans())
def test_nearest_rounding_matches_the_code_table(x, block_size, signed):
    if not signed:
        x = np.abs(x)
    q, got = roundtrip(x, block_size, signed)
    assert q.codes.dtype == jnp.uint8 and q.codes.shape == x.shape
    # blocks tile the last axis when it is a multiple of the block size; else the flattened leaf
    rows = x.ndim >= 1 and x.shape[-1] % block_size == 0
    assert q.scale.shape == ((*x.shape[:-1], x.shape[-1] // block_size) if rows else (math.ceil(x.size / block_size),))
    want = reference_nearest(x, block_size, signed)
    # ties and float32 division may pick the other of two equally near codes: allow 1e-6 relative slack
    assert np.all(np.abs(got - want) <= 1e-6 * np.abs(want) + error_bound(x, block_size, signed, 0) + 1e-45)
    # half a step in the normal range; below it a whole (absolute) step, toward the safe side
    assert np.all(np.abs(got - x) <= error_bound(x, block_size, signed, 0.5, 1.0))
    small = np.abs(x) < block_absmax(x, block_size).reshape(x.shape) * SMALLEST_NORMAL[signed]
    assert np.all(np.abs(got[small]) <= np.abs(x[small])) if signed else np.all(got[small] >= x[small])


@settings(max_examples=80, deadline=None)
@given(x=arrays, block_size=block_sizes, signed=st.booleans(), seed=st.integers(0, 2**31))
def test_stochastic_rounding_error_is_below_one_step(x, block_size, signed, seed):
    if not signed:
        x = np.abs(x)
    blocks = (*n_blocks(x.shape, block_size), block_size)
    u = adamfx._src.storage.rounding.uniform(jax.random.key(seed), blocks)
    _, got = roundtrip(x, block_size, signed, u)
    assert np.all(np.abs(got - x) <= error_bound(x, block_size, signed, 1.0))
    assert np.all((got == 0) | (np.sign(got) == np.sign(x)))


def test_block_maximum_is_exact_and_zeros_stay_zero():
    x = np.array([0.0, 3.0e-20, -7.5, 0.0, 1e-3, 2.0, 0.0, 0.0], np.float32)
    _, got = roundtrip(x, 4, signed=True)
    assert got[2] == -7.5 and got[5] == 2.0
    assert np.all(got[x == 0] == 0)
    assert np.all(roundtrip(np.zeros(10, np.float32), 4, True)[1] == 0)


def test_unsigned_code_clips_negatives_and_has_the_wider_range():
    x = np.array([1.0, 1e-9, -1.0, 0.5], np.float32)
    _, got = roundtrip(x, 4, signed=False)
    assert got[2] == 0 and got[0] == 1.0
    assert abs(got[1] - 1e-9) <= 2.0**-4 * 1e-9  # 1e-9 of the maximum is still a normal unsigned code
    assert roundtrip(x, 4, signed=True)[1][1] == 0  # and below the signed code's range (2^-17)


@pytest.mark.parametrize("signed", [True, False])
def test_stochastic_rounding_is_unbiased(signed):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(512) * 10.0 ** rng.uniform(-4, 0, 512)).astype(np.float32)
    x[0] = 3.0  # each block's maximum is 3: the scale is the same in every draw
    x[256] = -3.0 if signed else 3.0
    x[1:5] = [1e-9, 2e-10, 5e-12, -7e-10]  # below both codes' smallest normal value (3 * 2^-14, 3 * 2^-30)
    if not signed:
        x = np.abs(x)
    x64 = x.astype(np.float64)
    table = np.concatenate([-TABLES[signed][::-1], TABLES[signed]]) * 3.0
    lo = table[np.searchsorted(table, x64, side="right") - 1]
    hi = table[np.minimum(np.searchsorted(table, x64, side="left"), table.size - 1)]

    def one(key):
        u = adamfx._src.storage.rounding.uniform(key, (2, 256))  # x has 512 elements: two blocks of the last axis
        return dequantize(quantize(jnp.asarray(x), 256, signed, u), 256, signed)

    samples = np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(1), 4000)), np.float64)
    # the decoded value is code * (absmax / max value) in float32: within 2 ulps of the exact table value;
    # unbiased in the normal range, below it always the neighbour toward zero (signed) / away from it
    normal = np.abs(x64) >= 3.0 * SMALLEST_NORMAL[signed]
    assert 4 <= (~normal).sum() < 100
    assert_unbiased(samples[:, normal], x64[normal], lo[normal], hi[normal], rtol=2.0**-22)
    safe_side = lo[~normal] if signed else hi[~normal]
    safe_side = np.where(x64[~normal] < 0, hi[~normal], safe_side)
    low = samples[:, ~normal]
    np.testing.assert_allclose(low, np.broadcast_to(safe_side, low.shape), rtol=2.0**-22)


def test_int8_storage_keeps_small_and_complex_leaves_in_float32():
    storage = resolve_storage("int8", "mu_dtype")
    assert storage.signed and not resolve_storage("int8", "nu_dtype", nonnegative=True).signed
    small = storage.encode(jnp.ones(4095), default_dtype=jnp.float32)
    assert small.codes.dtype == jnp.float32 and small.scale.shape == (1,)
    assert storage.encode(jnp.ones(4096), default_dtype=jnp.float32).codes.dtype == jnp.uint8
    z = storage.encode(jnp.ones(5000, jnp.complex64), default_dtype=jnp.complex64)
    assert z.codes.dtype == jnp.complex64
    np.testing.assert_array_equal(np.asarray(storage.decode(z, dtype=jnp.complex64)), np.ones(5000))
    custom = adamfx.Int8Storage(block_size=100, min_size=0)
    q = custom.encode(jnp.ones((3, 70)), default_dtype=jnp.float32)
    assert q.scale.shape == (3,) and q.codes.shape == (3, 70)
    np.testing.assert_array_equal(np.asarray(custom.decode(q, dtype=jnp.float32)), np.ones((3, 70)))


@pytest.mark.parametrize("shape", [(10,), (4096,), (64, 256), (70, 65)])
def test_zeros_shortcut_equals_encoding_zeros(shape):
    for storage in (adamfx.Int8Storage(signed=True), adamfx.Int8Storage(signed=False), adamfx.FactoredStorage()):
        zero = jnp.zeros(shape)
        expected, got = storage.encode(zero, default_dtype=jnp.float32), storage.zeros(zero, default_dtype=jnp.float32)
        assert jax.tree.structure(expected) == jax.tree.structure(got)
        for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("power", [1, 2])
def test_accumulate_keeps_a_running_bound_of_the_block_maxima(power):
    """Inside a step the scale is ``decay * scale + weight * max|g|^power`` (NumPy), never below max |new|."""
    rng = np.random.default_rng(power)
    storage = resolve_storage("int8", "nu_dtype" if power == 2 else "mu_dtype", nonnegative=power == 2)
    decay, weight = 0.9, 0.1
    shape = (8, 512)
    stored = storage.zeros(jnp.zeros(shape), default_dtype=jnp.float32)
    scale = np.zeros((8, 2))
    for step in range(1, 6):
        g = rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 3, (8, 1))
        old = np.asarray(storage.decode(stored, dtype=jnp.float32), np.float64)
        x = g if power == 1 else g**2
        new, stored = storage.accumulate(
            stored, jnp.asarray(g, jnp.float32), power=power, decay=decay, weight=weight, default_dtype=jnp.float32
        )
        expected_new = decay * old + weight * x
        terms = np.abs(decay * old) + np.abs(weight * x)  # float32 rounding of the sum, relative to its terms
        assert np.all(np.abs(np.asarray(new) - expected_new) <= 1e-6 * terms)
        blocks = np.abs(g.reshape(8, 2, 256)).max(axis=-1) ** power
        scale = decay * scale + weight * blocks
        np.testing.assert_allclose(np.asarray(stored.scale), scale, rtol=1e-5)
        assert np.all(scale >= np.abs(expected_new).reshape(8, 2, 256).max(axis=-1) * (1 - 1e-6))
        # decoded within one code step (stochastic rounding: `key` given) of the new moment, relative to the bound
        key = jax.random.bits(jax.random.fold_in(jax.random.key(0), step), (), jnp.uint32)
        zero = storage.zeros(jnp.zeros(shape), default_dtype=jnp.float32)
        _, rounded = storage.accumulate(
            zero, jnp.asarray(g, jnp.float32), power=power, decay=0.0, weight=1.0, default_dtype=jnp.float32, key=key
        )
        got = np.asarray(storage.decode(rounded, dtype=jnp.float32), np.float64)
        bias = 2 ** (4 if power == 1 else 5) - 1
        floor = np.repeat(blocks, 256, axis=-1).reshape(shape) / MAX_VALUE[power == 1] * 2.0 ** (1 - bias - MANTISSA)
        assert np.all(np.abs(got - x) <= np.abs(x) * (2.0**-MANTISSA + 2.0**-20) + floor)


def test_generic_accumulate_is_decay_times_old_plus_weight_times_x():
    storage = adamfx.FloatStorage(jnp.float32)
    old, g = jnp.array([1.0, 2.0]), jnp.array([3.0, -4.0])
    moment, kept = storage.accumulate(old, g, power=2, decay=0.5, weight=0.25, default_dtype=jnp.float32)
    np.testing.assert_array_equal(np.asarray(moment), [0.5 + 2.25, 1.0 + 4.0])
    np.testing.assert_array_equal(np.asarray(kept), np.asarray(moment))
