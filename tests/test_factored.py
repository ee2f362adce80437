"""Factored second moment against a NumPy transcription of Adafactor (Shazeer & Stern, 2018, Alg. 4).

Adafactor keeps, for a matrix gradient ``G`` (n x m), row and column statistics
``R_t = b2 R_{t-1} + (1 - b2) (G_t^2) 1_m`` and ``C_t = b2 C_{t-1} + (1 - b2) 1_n^T (G_t^2)``
and uses ``V_t = R_t C_t / (1_n^T R_t)``. The transcription below uses sums, as the
paper does (adamfx keeps means; the estimate is the same), ``eps1 = 0`` (adamfx
guards the all-zero case instead) and a constant ``b2``. Higher-rank leaves are
stacks of matrices over the last two axes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamfx
from adamfx._src.core.base import stage_of
from adamfx._src.storage.factored import Factored


def adafactor_second_moment(grads: list[np.ndarray], b2: float) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(R_t, C_t, V_t) after each gradient; the last two axes are the matrix."""
    shape = grads[0].shape
    r = np.zeros(shape[:-1])
    c = np.zeros(shape[:-2] + shape[-1:])
    out = []
    for g in grads:
        g2 = g**2
        r = b2 * r + (1 - b2) * g2.sum(axis=-1)
        c = b2 * c + (1 - b2) * g2.sum(axis=-2)
        v = r[..., :, None] * c[..., None, :] / r.sum(axis=-1)[..., None, None]
        out.append((r, c, v))
    return out


@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 6)])
def test_factored_second_moment_matches_adafactor(shape):
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(shape) * rng.uniform(0.1, 10) for _ in range(20)]
    b2 = 0.95
    expected = adafactor_second_moment(grads, b2)
    with jax.enable_x64(True):
        tx = adamfx.scale_by_moments(b1=None, b2=b2, nu_dtype="factored")
        state = tx.init(jnp.zeros(shape))
        update = jax.jit(tx.update)
        for g, (r, c, v) in zip(grads, expected, strict=True):
            moments, state = update(jnp.asarray(g), state)
            m, n = shape[-1], shape[-2]
            np.testing.assert_allclose(state.nu.row, r / m, rtol=1e-12)  # adamfx keeps means
            np.testing.assert_allclose(state.nu.col, c / n, rtol=1e-12)
            np.testing.assert_allclose(moments.nu, v, rtol=1e-12)


def test_adam_with_factored_nu_matches_numpy():
    """Adam whose v is Adafactor's estimate: m / (1 - b1^t) / (sqrt(V_t / (1 - b2^t)) + eps)."""
    rng = np.random.default_rng(1)
    shape, lr, b1, b2, eps = (6, 4), 0.01, 0.9, 0.99, 1e-8
    grads = [rng.standard_normal(shape) for _ in range(15)]
    with jax.enable_x64(True):
        tx = adamfx.adam(lr, b1, b2, eps, nu_dtype="factored")
        params = jnp.zeros(shape)
        state = tx.init(params)
        p, m = np.zeros(shape), np.zeros(shape)
        for t, (g, (_, _, v)) in enumerate(zip(grads, adafactor_second_moment(grads, b2), strict=True), start=1):
            m = b1 * m + (1 - b1) * g
            p = p - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
            updates, state = tx.update(jnp.asarray(g), state, params)
            params = optax.apply_updates(params, updates)
            np.testing.assert_allclose(params, p, rtol=1e-10, atol=1e-14)


def test_vectors_and_thin_matrices_keep_the_full_moment():
    storage = adamfx.FactoredStorage(min_dim_size=3)
    assert storage.encode(jnp.ones((4, 5)), default_dtype=jnp.float32).row.shape == (4,)
    for shape in [(), (7,), (2, 9), (9, 2)]:
        kept = storage.encode(jnp.full(shape, 2.0), default_dtype=jnp.float32)
        assert kept.full.shape == shape and kept.row.shape == kept.col.shape == (1,)
        np.testing.assert_array_equal(np.asarray(storage.decode(kept, dtype=jnp.float32)), np.full(shape, 2.0))


def test_zero_moment_decodes_to_zero_and_state_is_small():
    state = adamfx.adam(1e-3, nu_dtype="factored").init({"w": jnp.zeros((300, 200))})
    nu = state[0].nu
    assert isinstance(nu, Factored) and nu.row["w"].shape == (300,) and nu.col["w"].shape == (200,)
    assert nu.full["w"].shape == (1,)
    record = Factored(nu.row["w"], nu.col["w"], nu.full["w"])
    assert np.all(np.asarray(adamfx.FactoredStorage().decode(record, dtype=jnp.float32)) == 0)


def test_factored_is_not_elementwise_and_only_for_the_second_moment():
    assert stage_of(adamfx.scale_by_moments(nu_dtype="factored")).elementwise is False
    assert stage_of(adamfx.scale_by_moments(mu_dtype="int8", nu_dtype="int8")).elementwise is True
    with pytest.raises(ValueError, match=r"mu_dtype=.*only a second moment"):
        adamfx.adam(mu_dtype="factored")
    with pytest.raises(ValueError, match=r"nu_dtype='factored'.*running maximum"):
        adamfx.amsgrad(nu_dtype="factored")
    with pytest.raises(ValueError, match="min_dim_size=1 is invalid"):
        adamfx.FactoredStorage(min_dim_size=1)
