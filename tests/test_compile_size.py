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


PLAIN = {
    "adam": lambda: adamfx.adam(1e-3),
    "adam torch": lambda: adamfx.adam(1e-3, convention="torch"),
    "adam keras": lambda: adamfx.adam(1e-3, convention="keras"),
    "adamw torch": lambda: adamfx.adamw(1e-3, convention="torch"),
    "amsgrad": lambda: adamfx.adam(1e-3, amsgrad=True),
}
# what each adds to Adam's elementwise work, in optax's own terms: adamw's decay p += wd p (a
# multiply and an add), AMSGrad's running maximum (one op)
EXTRA_OPS = {"adam": 0, "adam torch": 0, "adam keras": 0, "adamw torch": 2, "amsgrad": 1}
OPTAX = {
    "adam": lambda: optax.adam(1e-3),
    "adamw torch": lambda: optax.adamw(1e-3, weight_decay=1e-2),
    "amsgrad": lambda: optax.amsgrad(1e-3),
}


def step_of(tx, n_leaves: int):
    params = {f"p{i:03d}": jnp.zeros((4, 64)) for i in range(n_leaves)}

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step).trace(params, tx.init(params), params)


def per_leaf(make, count) -> int:
    """What one more leaf adds to the step, measured by ``count`` on the traced step of 8 and 9 leaves."""
    return count(step_of(make(), 9)) - count(step_of(make(), 8))


def jaxpr_eqns(traced) -> int:
    return len(traced.jaxpr.eqns)


def hlo_ops(traced) -> int:
    return n_ops(traced.lower().as_text())


@pytest.mark.parametrize("config", list(PLAIN))
@pytest.mark.parametrize("count", [jaxpr_eqns, hlo_ops], ids=["jaxpr", "stablehlo"])
def test_plain_adam_does_no_more_work_per_leaf_than_optax(config, count):
    """Each step's scalars (1 - b, 1 / (1 - b^t), -lr_t) are computed once, not per leaf, and the 0/0
    guard is one max: per leaf, adamfx traces and lowers no more than optax.adam (plus what the
    variant adds to Adam, and no more than optax's own transform of it, where it has one)."""
    ours = per_leaf(PLAIN[config], count)
    reference = per_leaf(OPTAX["adam"], count) + EXTRA_OPS[config]
    assert ours <= reference, (config, ours, reference)
    if config in OPTAX:  # optax's own transform of the variant
        assert ours <= per_leaf(OPTAX[config], count), (config, ours, per_leaf(OPTAX[config], count))


@pytest.mark.parametrize("config", ["bf16", "int8", "factored"])
def test_a_low_bit_codec_is_traced_once_per_leaf_shape(config):
    """The codecs (bf16 stochastic rounding, int8 blocks, factored means) are traced and lowered once per
    leaf shape and called by each leaf of it (``adamfx._src.core.tracing``): one more leaf adds no more to
    the lowered step than it adds to plain Adam's (traced per leaf, int8 added 8x as much, factored 5x)."""
    assert per_leaf(CONFIGS[config], hlo_ops) <= 1.25 * per_leaf(PLAIN["adam"], hlo_ops)


def distinct_kernels(make, n_leaves: int) -> int:
    """Distinct fused computations in the compiled step (XLA:CPU compiles each distinct one on its own)."""
    text = step_of(make(), n_leaves).lower().compile().as_text()
    bodies = re.findall(r"\n%?(fused_computation[.\d]*) \(([^\n]*)\) -> [^\n]*\{\n(.*?)\n\}", text, re.S)
    normal = set()
    for _, signature, body in bodies:
        body = re.sub(r"metadata=\{[^}]*\}", "", body)
        normal.add(re.sub(r"[%\w.-]+:", "x:", signature) + re.sub(r"%[\w.-]+", "%x", body))
    return len(normal)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the offsets are made opaque on XLA:CPU only")
@pytest.mark.parametrize("config", ["fused", "fused bf16"])
def test_fused_step_compiles_one_kernel_per_leaf_shape(config):
    """``fused`` cuts the flat updates at offsets XLA cannot fold into each leaf's kernel: more leaves
    of one shape add no distinct kernel (with constant offsets, every leaf had its own)."""
    make = {"fused": lambda: adamfx.fused(adamfx.adam(1e-3)), "fused bf16": CONFIGS["fused bf16"]}[config]
    assert distinct_kernels(make, 16) <= distinct_kernels(make, 8)


def test_fused_updates_equal_the_unfused_ones_bit_for_bit():
    """The opaque offsets cut the same pieces as ``lax.split`` (the loop that hides them never runs)."""
    params = {f"p{i}": jnp.linspace(-1.0, 1.0, 5 + i) for i in range(6)}
    grads = jax.tree.map(lambda p: jnp.cos(3 * p), params)
    fused_tx, plain_tx = adamfx.fused(adamfx.adam(1e-2)), adamfx.adam(1e-2)
    fused_u, _ = jax.jit(fused_tx.update)(grads, fused_tx.init(params), params)
    plain_u, _ = jax.jit(plain_tx.update)(grads, plain_tx.init(params), params)
    for name in params:
        assert jnp.array_equal(fused_u[name], plain_u[name]), name
