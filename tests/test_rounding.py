"""Stochastic rounding: unbiased, two-valued, deterministic per key; the hash uniforms it draws.

Tolerances come from the variance: rounding ``x`` between its neighbours
``lo < x < hi`` is a Bernoulli draw with ``Var = (x - lo)(hi - x)``, so the mean
of ``n`` draws has standard error ``sqrt((x - lo)(hi - x) / n)``. Each element's
bias must stay within 5 standard errors, and the sum of squared z-scores over
``K`` elements must be a plausible chi-square(K) value (within ``K +- 6 sqrt(2K)``),
which checks the variance too. The keys are fixed, so the tests are deterministic.
"""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from adamfx._src.storage.rounding import StepKey, stochastic_round, uniform

DRAWS = 4000


def neighbours(x: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """The two ``dtype`` values around float64 ``x``, by NumPy/ml_dtypes (independent of JAX)."""
    near = x.astype(dtype)
    up = np.nextafter(near, np.array(np.inf, dtype)) if dtype == np.float16 else _next(near, +1)
    down = np.nextafter(near, np.array(-np.inf, dtype)) if dtype == np.float16 else _next(near, -1)
    lo = np.where(near.astype(np.float64) <= x, near, down).astype(np.float64)
    hi = np.where(near.astype(np.float64) >= x, near, up).astype(np.float64)
    return lo, hi


def _next(a: np.ndarray, direction: int) -> np.ndarray:
    """bfloat16 neighbour by integer steps on the bit pattern (finite, non-zero inputs)."""
    bits = a.view(np.uint16).astype(np.int32)
    step = np.where((a.astype(np.float64) > 0) == (direction > 0), 1, -1)
    return (bits + step).astype(np.uint16).view(ml_dtypes.bfloat16)


def draws(x: jax.Array, dtype, n: int = DRAWS, seed: int = 0) -> np.ndarray:
    keys = jax.random.split(jax.random.key(seed), n)
    rounded = jax.jit(jax.vmap(lambda k: stochastic_round(x, dtype, k)))(keys)
    return np.asarray(rounded.astype(jnp.float64 if jax.config.jax_enable_x64 else jnp.float32), np.float64)


def assert_unbiased(samples: np.ndarray, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, rtol: float = 0) -> None:
    """``samples`` (draws x elements) are all ``lo`` or ``hi`` (within ``rtol``) and average to ``x``."""
    n = samples.shape[0]
    is_lo = np.abs(samples - lo) <= rtol * np.abs(lo)
    is_hi = np.abs(samples - hi) <= rtol * np.abs(hi)
    assert np.all(is_lo | is_hi), "a draw is not one of the two neighbours"
    samples = np.where(is_lo, lo, hi)
    se = np.sqrt((x - lo) * (hi - x) / n)
    bias = samples.mean(axis=0) - x
    exact = se == 0
    assert np.all(bias[exact] == 0)
    z = bias[~exact] / se[~exact]
    assert np.max(np.abs(z)) < 5, f"largest |bias| / standard error = {np.max(np.abs(z)):.2f}"
    k = z.size
    assert abs(np.sum(z**2) - k) < 6 * np.sqrt(2 * k), f"chi-square {np.sum(z**2):.1f} for {k} elements"


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_stochastic_rounding_is_unbiased(dtype):
    rng = np.random.default_rng(0)
    x32 = (rng.standard_normal(256) * 10.0 ** rng.uniform(-3, 3, 256)).astype(np.float32)
    x = x32.astype(np.float64)
    lo, hi = neighbours(x, np.dtype(dtype))
    assert_unbiased(draws(jnp.asarray(x32), dtype), x, lo, hi)


def test_stochastic_rounding_from_float64_to_float32_is_unbiased():
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        x = rng.standard_normal(128)
        near = x.astype(np.float32)
        other = np.nextafter(near, np.where(near.astype(np.float64) < x, np.inf, -np.inf).astype(np.float32))
        lo, hi = np.minimum(near, other).astype(np.float64), np.maximum(near, other).astype(np.float64)
        assert_unbiased(draws(jnp.asarray(x), jnp.float32), x, lo, hi)


def test_exact_and_special_values_are_kept():
    x = jnp.array([0.0, -0.0, 1.0, -2.5, 2.0**-130, jnp.inf, -jnp.inf, jnp.nan], jnp.float32)
    out = stochastic_round(x, jnp.bfloat16, jax.random.key(3)).astype(jnp.float32)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x.astype(jnp.bfloat16).astype(jnp.float32)))


def test_complex_rounds_each_part_independently():
    with jax.enable_x64(True):
        x = jnp.full(DRAWS, (1 + 2.0**-25) + 1j * (3 - 2.0**-23), jnp.complex128)
        out = np.asarray(stochastic_round(x, jnp.complex64, jax.random.key(0)))
    assert out.dtype == np.complex64
    for part, value, lo, hi in (
        (out.real, 1 + 2.0**-25, 1.0, 1 + 2.0**-23),
        (out.imag, 3 - 2.0**-23, 3 - 2.0**-22, 3.0),
    ):
        part = part.astype(np.float64)[:, None]
        assert_unbiased(part, np.array([value]), np.array([lo]), np.array([hi]))
    assert np.mean((out.real > 1) == (out.imag < 3)) < 0.6  # the parts use different random numbers


def test_deterministic_for_a_key_and_different_for_another():
    x = jnp.linspace(1.0, 2.0, 1000, dtype=jnp.float32) + 2.0**-12
    a = stochastic_round(x, jnp.bfloat16, jax.random.key(5))
    b = stochastic_round(x, jnp.bfloat16, jax.random.key(5))
    c = stochastic_round(x, jnp.bfloat16, jax.random.fold_in(jax.random.key(5), 1))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.mean(np.asarray(a) != np.asarray(c)) > 0.2


def test_uniform_moments_histogram_and_independence():
    n = 1 << 16
    u = np.asarray(uniform(jax.random.key(0), (n,)), np.float64)
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / n)
    counts = np.histogram(u, bins=32, range=(0, 1))[0]
    expected = n / 32
    chi2 = np.sum((counts - expected) ** 2 / expected)  # chi-square with 31 degrees of freedom
    assert chi2 < 31 + 6 * np.sqrt(62)
    # neighbouring elements and neighbouring keys (next step, next leaf) are uncorrelated
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 5 / np.sqrt(n)
    v = np.asarray(uniform(jax.random.fold_in(jax.random.key(0), 1), (n,)), np.float64)
    assert abs(np.corrcoef(u, v)[0, 1]) < 5 / np.sqrt(n)
    w = np.asarray(uniform(jax.random.key(0), (256, 256)), np.float64).reshape(-1)
    np.testing.assert_array_equal(u, w)  # row-major element index, whatever the shape


def test_one_step_key_shared_by_leaves_rounds_each_without_bias_and_independently():
    """A step rounds all leaves with one word (salted with each leaf's values): each leaf stays unbiased,
    two leaves of one shape make independent choices, and a StepKey rounds as its bare word does."""
    rng = np.random.default_rng(7)
    pa, pb = rng.uniform(0.1, 0.9, 64), rng.uniform(0.1, 0.9, 64)  # where x lies between its neighbours
    a = jnp.asarray(1 + pa * 2.0**-7, jnp.float32)  # bfloat16's spacing is 2^-7 in [1, 2) and 2^-6 in [2, 4)
    b = jnp.asarray(2 + pb * 2.0**-6, jnp.float32)
    words = jax.random.bits(jax.random.key(1), (DRAWS,), jnp.uint32)

    def both(word):
        key = StepKey(word)
        return stochastic_round(a, jnp.bfloat16, key), stochastic_round(b, jnp.bfloat16, key)

    ra, rb = (np.asarray(r, np.float64) for r in jax.jit(jax.vmap(both))(words))
    up_a, up_b = (ra - 1) / 2.0**-7, (rb - 2) / 2.0**-6  # 1 where rounded up, 0 where down
    assert set(np.unique(up_a)) <= {0.0, 1.0} and set(np.unique(up_b)) <= {0.0, 1.0}
    for up, p in ((up_a, pa), (up_b, pb)):
        z = (up.mean(axis=0) - p) / np.sqrt(p * (1 - p) / DRAWS)
        assert np.sum(z**2) < 64 + 6 * np.sqrt(128)  # chi-square(64): unbiased, Bernoulli variance
    ea, eb = (up_a - pa).reshape(-1), (up_b - pb).reshape(-1)
    assert abs(np.corrcoef(ea, eb)[0, 1]) < 5 / np.sqrt(ea.size)
    np.testing.assert_array_equal(
        np.asarray(stochastic_round(a, jnp.bfloat16, StepKey(words[0]))),
        np.asarray(stochastic_round(a, jnp.bfloat16, words[0])),
    )
