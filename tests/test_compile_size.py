"""The work XLA gets per leaf stays bounded: the step's HLO grows linearly in the leaves, with no per-leaf constants.

Compile time is measured in ``benchmarks/compile_time.py``; here only what causes
it is checked, on the lowered step (no wall-clock timing). XLA:CPU compiles each
*distinct* fused kernel on its own (tens of milliseconds each) and identical
kernels once, so a constant that differs per leaf (a PRNG ``fold_in(key, i)``, a
hashed leaf index) costs a compilation per leaf: the distinct constants of the
step must not grow with the number of leaves.
"""

import re

import jax
import jax.numpy as jnp
import optax
import pytest

import adamfx

BF16 = dict(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)
INT8 = adamfx.Int8Storage(min_size=0, block_size=64)
CONFIGS = {
    "adam": lambda: adamfx.adam(1e-3),
    "bf16": lambda: adamfx.adam(1e-3, **BF16),
    "int8": lambda: adamfx.adam(1e-3, mu_dtype=INT8, nu_dtype=INT8),
    "factored": lambda: adamfx.adam(1e-3, nu_dtype="factored"),
    "bf16 sgd": lambda: adamfx.sgd(1e-2, momentum=0.9, mu_dtype=jnp.bfloat16),
    "fused bf16": lambda: adamfx.fused(adamfx.adam(1e-3, **BF16)),
}


def lowered_step(config: str, n_leaves: int) -> str:
    params = {f"p{i:03d}": jnp.zeros((4, 64)) for i in range(n_leaves)}
    tx = CONFIGS[config]()

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step).lower(params, tx.init(params), params).as_text()


def n_ops(text: str) -> int:
    return text.count(" = ")


def constants(text: str) -> set[str]:
    return set(re.findall(r"stablehlo\.constant dense<([^>]*)>", text))


@pytest.mark.parametrize("config", list(CONFIGS))
def test_step_hlo_grows_linearly_in_the_leaves(config):
    small, large = lowered_step(config, 8), lowered_step(config, 16)
    assert n_ops(large) <= 2.2 * n_ops(small), (n_ops(small), n_ops(large))


@pytest.mark.parametrize("config", ["bf16", "int8", "bf16 sgd"])
def test_stochastic_rounding_adds_no_constant_per_leaf(config):
    """Every leaf rounds with the same kernel: doubling the leaves adds no new constant to the step."""
    small, large = lowered_step(config, 8), lowered_step(config, 16)
    assert constants(large) == constants(small), sorted(constants(large) - constants(small))[:5]
    assert "threefry" in small and large.count("threefry") == small.count("threefry")  # PRNG draws per step, not leaf
