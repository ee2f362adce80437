"""The Cautious mask (Liang et al., 2024): the stage, and ``adam``/``adamw(cautious=True)``.

References: pytorch-optimizer 4.1.0's ``BaseOptimizer.apply_cautious`` (live; it transcribes the paper's
code, ``mask * numel / (nnz + 1)``) for the mask, and for the optimizers a NumPy transcription of the
paper's cautious AdamW (Alg. 1 with Adam's update ``u_t``) calling that live mask. No peer ships a
cautious Adam/AdamW (pytorch-optimizer's ``cautious=`` is on Lion, ADOPT, AdEMAMix, LaProp, ... only).
Lion's cautious forms are checked against lion-pytorch and pytorch-optimizer in test_parity_lion.py.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamfx
from tests import peers

STEPS = 150
LR = 0.01


def _apply_cautious(update: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """pytorch-optimizer's mask, live: ``BaseOptimizer.apply_cautious`` (in place on a torch tensor)."""
    import torch
    from pytorch_optimizer.base.optimizer import BaseOptimizer

    out = torch.from_numpy(np.array(update, dtype=np.float64))
    BaseOptimizer.apply_cautious(out, torch.from_numpy(np.array(grad, dtype=np.float64)))
    return out.numpy()


def test_mask_matches_pytorch_optimizer():
    rng = np.random.default_rng(0)
    u, g = rng.standard_normal((5, 7)), rng.standard_normal((5, 7))
    with jax.enable_x64(True):
        ours = adamfx.cautious_mask({"w": jnp.asarray(u), "s": jnp.asarray(0.3)}, {"w": jnp.asarray(g), "s": 2.0})
    np.testing.assert_allclose(ours["w"], _apply_cautious(u, g), rtol=1e-15, atol=0)
    assert float(ours["s"]) == pytest.approx(0.3 / 2)  # a scalar leaf that agrees: d / (nnz + 1) = 1 / 2
    assert np.count_nonzero(ours["w"]) == np.count_nonzero(u * g > 0)


def test_mean_rescale_is_lion_pytorch_formula():
    # lion-pytorch 0.2.5 (cautious_lion.Lion.step), transcribed: scale = where(u g > 0, 1, f);
    # scale /= scale.mean().clamp(min=1e-5); u *= scale.
    rng = np.random.default_rng(1)
    u, g = rng.standard_normal(40), rng.standard_normal(40)
    for factor in (0.0, 0.25):
        scale = np.where(u * g > 0, 1.0, factor)
        expected = u * scale / max(scale.mean(), 1e-5)
        with jax.enable_x64(True):
            ours = adamfx.cautious_mask(jnp.asarray(u), jnp.asarray(g), rescale="mean", factor=factor)
        np.testing.assert_allclose(ours, expected, rtol=1e-14)
    with jax.enable_x64(True):  # nothing agrees: the floor keeps the (all-zero) update finite
        assert not np.any(adamfx.cautious_mask(jnp.asarray(u), jnp.asarray(-u), rescale="mean"))


def _numpy_cautious_adam(problem, steps, *, eps, eps_raw, weight_decay=0.0, coupled=False, b1=0.9, b2=0.999):
    """Cautious AdamW (Liang et al., 2024, Alg. 1 with Adam's u_t), float64; the mask is pytorch-optimizer's."""
    p = problem.params_in(np.float64)
    m = {k: np.zeros_like(x) for k, x in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    rows = []
    for t in range(1, steps + 1):
        grads = problem.grad(p, t - 1)
        for k in p:
            g = grads[k] + weight_decay * p[k] if coupled else grads[k]
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g**2
            bc1, bc2 = 1 - b1**t, 1 - b2**t
            if eps_raw:  # Keras: eps on the uncorrected root
                u = (m[k] / bc1) * math.sqrt(bc2) / (np.sqrt(v[k]) + eps)
            else:
                u = (m[k] / bc1) / (np.sqrt(v[k] / bc2) + eps)
            u = _apply_cautious(u, g)
            decoupled = 0.0 if coupled else weight_decay * p[k]
            p[k] = p[k] - LR * (u + decoupled)
        rows.append(peers.flatten(p))
    return np.stack(rows)


EPS = {"optax": (1e-8, False), "torch": (1e-8, False), "keras": (1e-7, True)}


DEFAULT_CASES = {("adam", "optax"), ("adam_coupled", "torch"), ("adamw", "keras")}  # the rest run in CI
CASES = [
    pytest.param(case, convention, marks=() if (case, convention) in DEFAULT_CASES else pytest.mark.slow)
    for case in ("adam", "adam_coupled", "adamw")
    for convention in ("optax", "torch", "keras")
]


@pytest.mark.parametrize(("case", "convention"), CASES)
def test_cautious_adam_matches_paper(case, convention):
    problem = peers.make_problem()
    eps, eps_raw = EPS[convention]
    if case == "adam":
        tx, ref = adamfx.adam(LR, cautious=True, convention=convention), {}
    elif case == "adam_coupled":
        tx = adamfx.adam(LR, weight_decay=0.05, decoupled=False, cautious=True, convention=convention)
        ref = {"weight_decay": 0.05, "coupled": True}
    else:
        tx, ref = adamfx.adamw(LR, weight_decay=0.05, cautious=True, convention=convention), {"weight_decay": 0.05}
    expected = _numpy_cautious_adam(problem, STEPS, eps=eps, eps_raw=eps_raw, **ref)
    ours = peers.run_transform(tx, problem, STEPS, np.float64)
    assert peers.max_abs_diff(ours, expected) <= 1e-10
    if case == "adam":
        uncautious = peers.run_transform(adamfx.adam(LR, convention=convention), problem, STEPS, np.float64)
        assert peers.max_abs_diff(uncautious, expected) > 1e-3  # the mask really changes the trajectory


def test_cautious_adam_float32():
    problem = peers.make_problem(np.float32)
    expected = _numpy_cautious_adam(problem, STEPS, eps=1e-8, eps_raw=False, weight_decay=0.05)
    ours = peers.run_transform(adamfx.adamw(LR, weight_decay=0.05, cautious=True), problem, STEPS, np.float32)
    assert peers.max_rel_diff(ours, expected) <= 1e-5


def test_moments_are_masked_on_mu():
    """Wrapping only the moments stage masks ``mu``: after normalize, the same as wrapping the whole core."""
    params = {"w": jnp.arange(6.0).reshape(2, 3) - 2.5}
    whole = adamfx.chain(adamfx.cautious(adamfx.scale_by_moments(), adamfx.bias_correction(), adamfx.normalize()))
    moments = adamfx.chain(adamfx.cautious(adamfx.scale_by_moments()), adamfx.bias_correction(), adamfx.normalize())
    s1, s2 = whole.init(params), moments.init(params)
    for step in range(4):
        g = jax.tree.map(lambda p: jnp.sin(p * (step + 1)), params)
        u1, s1 = whole.update(g, s1, params)
        u2, s2 = moments.update(g, s2, params)
        np.testing.assert_allclose(u1["w"], u2["w"], rtol=1e-6)


def test_fused_rejects_cautious():
    with pytest.raises(ValueError, match="Cautious needs per-leaf shapes"):
        adamfx.fused(adamfx.adamw(cautious=True))
    adamfx.fused(adamfx.adamw())  # the uncautious one still fuses


def test_cautious_factor_is_a_state_hyperparameter():
    params = {"w": jnp.ones(4)}
    tx = adamfx.cautious(adamfx.trace(0.0), rescale="mean", factor=0.5)
    assert tx == adamfx.cautious(adamfx.trace(0.0), rescale="mean", factor=0.5)
    state = adamfx.set_hyperparams(tx.init(params), cautious_factor=0.0)
    g = {"w": jnp.array([1.0, -1.0, 1.0, 1.0])}
    u, _ = tx.update(g, state, params)  # trace(0) passes g on: all agree, s = 1, mean 1
    np.testing.assert_array_equal(u["w"], g["w"])
    reversed_ = adamfx.cautious(optax.scale(-1.0), rescale="mean")
    u, _ = reversed_.update(g, reversed_.init(params), params)  # -g disagrees everywhere: all dropped
    assert not np.any(u["w"])
    with pytest.raises(ValueError, match="cautious_factor"):
        adamfx.set_hyperparams(state, cautious_factor=1.5)
    with pytest.raises(ValueError, match="rescale"):
        adamfx.cautious(adamfx.trace(0.0), rescale="median")
    with pytest.raises(ValueError, match="cautious_factor"):
        adamfx.cautious(adamfx.trace(0.0), factor=-0.1)
