"""The moment storages the low-memory benchmarks compare, by name (``adamfx.adam`` keyword arguments)."""

import jax.numpy as jnp

import adamfx

NEAREST = adamfx.Int8Storage(rounding="nearest")

STORAGES = {
    "fp32": {},
    "bf16": dict(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
    "int8": dict(mu_dtype="int8", nu_dtype="int8"),
    "int8 nearest": dict(mu_dtype=NEAREST, nu_dtype=NEAREST),
    "factored": dict(nu_dtype="factored"),
    "bf16 + factored": dict(mu_dtype=jnp.bfloat16, nu_dtype="factored"),
    "int8 + factored": dict(mu_dtype="int8", nu_dtype="factored"),
    "int8 block 64": dict(mu_dtype=adamfx.Int8Storage(block_size=64), nu_dtype=adamfx.Int8Storage(block_size=64)),
    "int8 block 2048": dict(mu_dtype=adamfx.Int8Storage(block_size=2048), nu_dtype=adamfx.Int8Storage(block_size=2048)),
}
