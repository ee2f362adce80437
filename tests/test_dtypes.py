"""Dtypes: the updates keep the params' dtype (bfloat16, float16, float32, float64, complex64), the moments
follow it (second moments real, float32 for float16 params), and ``mu_dtype``/``nu_dtype`` reach every buffer.
"""

from __future__ import annotations

import contextlib
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamfx
from tests import registry
from tests.test_convergence import ADAM_FAMILY

OPTIMIZERS = ("sgd", "adagrad", "rmsprop", "adadelta", "nadam", "nadamw", "adamax", "radam")


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32, jnp.complex64])
@pytest.mark.parametrize("name", ADAM_FAMILY)
def test_adam_family_preserves_dtype(name, dtype):
    params = {"w": jnp.ones((4, 3), dtype), "b": jnp.zeros(3, dtype)}
    tx = ADAM_FAMILY[name]("torch")
    state = tx.init(params)
    grads = jax.tree.map(lambda p: (p + 1) * 0.5, params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    for leaf in jax.tree.leaves(updates):
        assert leaf.dtype == dtype
        assert bool(jnp.all(jnp.isfinite(leaf)))
    assert jax.tree.map(lambda x: x.dtype, jax.tree.leaves(state)) == jax.tree.map(
        lambda x: x.dtype, jax.tree.leaves(tx.init(params))
    )


def test_preserves_float64():
    with jax.enable_x64(True):
        params = {"w": jnp.ones(3, jnp.float64)}
        tx = adamfx.adam(1e-3)
        updates, _ = jax.jit(tx.update)(params, tx.init(params), params)
        assert updates["w"].dtype == jnp.float64


def test_complex_moments_use_abs_squared():
    """Complex params: nu is the EMA of |g|^2 (real) and mu is complex, as in optax.

    (torch.optim treats a complex tensor as pairs of reals instead: a different rule.)
    """
    g = np.array([1 + 2j, -0.5 + 0.25j, 3j])
    with jax.enable_x64(True):
        params = {"z": jnp.array([0.5 - 1j, 2 + 0j, -1 + 1j], jnp.complex128)}
        ours, ref = adamfx.adam(0.1), optax.adam(0.1)
        state, ref_state, ref_params = ours.init(params), ref.init(params), params
        for step in range(20):
            grads = {"z": jnp.asarray(g * (step + 1))}
            updates, state = jax.jit(ours.update)(grads, state, params)
            params = optax.apply_updates(params, updates)
            ref_updates, ref_state = ref.update(grads, ref_state, ref_params)
            ref_params = optax.apply_updates(ref_params, ref_updates)
        assert state[0].nu["z"].dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(params["z"]), np.asarray(ref_params["z"]), rtol=1e-12)


# Every optional state path on: momentum buffers, centering, Nesterov.
FULL = {
    "sgd": {"momentum": 0.9, "nesterov": True},
    "rmsprop": {"momentum": 0.9, "centered": True},
    "radam": {"nesterov": True},
}


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32, jnp.float64, jnp.complex64])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_preserves_dtypes(name, dtype):
    # jax.enable_x64 only where needed: it is newer than the minimum jax (.ci/min-versions runs the other dtypes)
    with jax.enable_x64(True) if dtype == jnp.float64 else contextlib.nullcontext():
        params = {"w": jnp.linspace(-1, 1, 6, dtype=dtype).reshape(2, 3), "b": jnp.ones(3, dtype)}
        tx = getattr(adamfx, name)(1e-2, weight_decay=1e-3, **FULL.get(name, {}))
        state = tx.init(params)
        step = jax.jit(tx.update)
        for _ in range(3):
            updates, state = step(params, state, params)
            params = optax.apply_updates(params, updates)
        for leaf in jax.tree.leaves(updates):
            assert leaf.dtype == dtype
            assert bool(jnp.all(jnp.isfinite(leaf)))
        assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(params))
        # moments like the params (second moments real; float32 for float16 params, issue 10), counters int
        kept = jnp.float32 if dtype == jnp.float16 else dtype
        for leaf in jax.tree.leaves(state):
            assert leaf.dtype in (kept, jnp.finfo(kept).dtype, jnp.int32) or leaf.ndim == 0


BF16 = jnp.bfloat16
# The cases this test ran by default before the registry drove it (optax convention, momentum and centering on).
DEFAULT = {"sgd-optax", "adagrad-optax", "rmsprop-centered-optax", "adadelta-optax", "nadam-optax", "adamax-optax"}
DEFAULT |= {"radam-optax"}


def _storage_cases():
    """Every registered optimizer that takes ``mu_dtype`` or ``nu_dtype``, with each set to bfloat16."""
    for case in registry.cases(registry.ALL, lambda e: e.id in DEFAULT or registry.runs_by_default(e)):
        (entry,) = case.values
        takes = inspect.signature(entry.factory).parameters
        storage = {name: BF16 for name in ("mu_dtype", "nu_dtype") if name in takes}
        if storage:
            yield pytest.param(entry, storage, id=entry.id, marks=case.marks)


@pytest.mark.parametrize(("entry", "storage"), list(_storage_cases()))
def test_state_storage_dtype(entry, storage):
    """``mu_dtype``/``nu_dtype`` reach every stored buffer; the maths and the updates stay float32.

    (The optimizers of ``registry.FLOAT32_STATE`` keep some state in float32 by design, those of
    ``registry.PARAMS_IN_STATE`` a copy of the params in their dtype.)
    """
    params = {"w": jnp.ones(4)}
    tx = entry.build(**storage)
    float32_too = entry.factory in registry.FLOAT32_STATE or entry.factory in registry.PARAMS_IN_STATE
    allowed = {jnp.dtype(BF16)} | ({jnp.dtype(jnp.float32)} if float32_too else set())
    state = tx.init(params)
    stored = [leaf for leaf in jax.tree.leaves(state) if leaf.ndim == 1]
    assert stored and {leaf.dtype for leaf in stored} <= allowed and any(leaf.dtype == BF16 for leaf in stored)
    updates, state = jax.jit(tx.update)(params, state, params)
    assert updates["w"].dtype == jnp.float32
    assert {leaf.dtype for leaf in jax.tree.leaves(state) if leaf.ndim == 1} <= allowed
