"""The one eps vocabulary (``eps_placement``) against NumPy transcriptions of each denominator."""

import jax
import numpy as np
import pytest

import adamfx

B1, B2, EPS, STEPS = 0.9, 0.99, 1e-3, 3


def _grads():
    rng = np.random.default_rng(0)
    return [rng.normal(size=5) * 1e-2 for _ in range(STEPS)]


def _numpy_adam(placement):
    """Adam's update at step STEPS with eps where ``placement`` says (float64)."""
    m = v = np.zeros(5)
    for g in _grads():
        m, v = B1 * m + (1 - B1) * g, B2 * v + (1 - B2) * g * g
    t = STEPS
    m_hat, v_hat = m / (1 - B1**t), v / (1 - B2**t)
    denominator = {
        "outside": np.sqrt(v_hat) + EPS,
        "outside_raw": (np.sqrt(v) + EPS) / np.sqrt(1 - B2**t),
        "inside": np.sqrt(v_hat + EPS),
        "clamp": np.maximum(np.sqrt(v_hat), EPS),
    }[placement]
    return m_hat / denominator


@pytest.mark.parametrize("placement", ["outside", "outside_raw", "inside", "clamp"])
def test_normalize_places_eps(placement):
    tx = adamfx.chain(
        adamfx.scale_by_moments(B1, B2), adamfx.bias_correction(), adamfx.normalize(EPS, eps_placement=placement)
    )
    with jax.enable_x64(True):
        params = {"w": np.zeros(5)}
        state = tx.init(params)
        for g in _grads():
            updates, state = tx.update({"w": g}, state, params)
        np.testing.assert_allclose(np.asarray(updates["w"]), _numpy_adam(placement), rtol=1e-12)


@pytest.mark.parametrize("placement", ["inside", "outside"])
def test_infinity_norm_places_eps(placement):
    tx = adamfx.chain(adamfx.scale_by_moments(B1, None), adamfx.infinity_norm(B2, EPS, eps_placement=placement))
    m, u = np.zeros(5), np.zeros(5)
    for g in _grads():
        m = B1 * m + (1 - B1) * g
        u = np.maximum(B2 * u, np.abs(g) + (EPS if placement == "inside" else 0.0))
    expected = m / (u if placement == "inside" else u + EPS)
    with jax.enable_x64(True):
        params = {"w": np.zeros(5)}
        state = tx.init(params)
        for g in _grads():
            updates, state = tx.update({"w": g}, state, params)
        np.testing.assert_allclose(np.asarray(updates["w"]), expected, rtol=1e-12)


@pytest.mark.parametrize("factory", [adamfx.normalize, adamfx.rectify])
def test_unknown_placement_is_an_error_naming_the_argument(factory):
    with pytest.raises(ValueError, match=r"eps_placement='corrected' is invalid.*'outside'"):
        factory(eps_placement="corrected")


def test_infinity_norm_has_no_raw_or_clamp_placement():
    with pytest.raises(ValueError, match=r"eps_placement='clamp' is invalid: it must be one of 'inside', 'outside'"):
        adamfx.infinity_norm(eps_placement="clamp")


@pytest.mark.parametrize(("name", "convention"), [("adagrad", "optax"), ("rmsprop", "keras"), ("adadelta", "torch")])
def test_eps_inside_the_root_is_named_eps_in_the_state(name, convention):
    """The constructor's eps is the state's eps (it was once stored as eps_root: set_hyperparams missed it)."""
    state = getattr(adamfx, name)(eps=3e-5, convention=convention).init({"w": np.zeros(2, np.float32)})
    assert float(adamfx.hyperparams(state)["eps"]) == pytest.approx(3e-5)
    assert float(adamfx.hyperparams(state)["eps_root"]) == 0.0
