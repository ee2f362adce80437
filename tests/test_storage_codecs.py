"""The low-bit encoders write the new moments over the old ones in place (checked on the compiled step, no timing).

A donated step keeps its moments in the state's own buffers. XLA:CPU's default copy insertion copies the old
low-bit moments once per step (it cannot order the parameter update, which reads them, before the encoder, which
overwrites them); its region-based analysis orders the two and needs no copy -- provided the encoder's output
depends on the old moment elementwise. The int8 encoder once drew its random words in the blocks' shape and
salted them with the reshaped moment, which made XLA copy the codes even then (``benchmarks/RESULTS.md``).
"""

import functools

import jax
import jax.numpy as jnp
import optax
import pytest

import adamfx

STORAGES = {
    "bf16": dict(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
    "int8": dict(mu_dtype="int8", nu_dtype="int8"),
    "int8 + factored": dict(mu_dtype="int8", nu_dtype="factored"),
}
REGION_ANALYSIS = {"xla_cpu_copy_insertion_use_region_analysis": True}


def optimized_step(tx, params) -> str:
    @functools.partial(jax.jit, donate_argnums=(0, 1), compiler_options=REGION_ANALYSIS)
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step.lower(params, tx.init(params), params).compile().as_text()


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU compiler option")
@pytest.mark.parametrize("name", list(STORAGES))
def test_the_donated_step_copies_no_moment(name):
    params = {"w": jnp.zeros((64, 256))}  # 16384 elements: int8 quantizes it, blocks tile the last axis
    text = optimized_step(adamfx.adam(1e-3, **STORAGES[name]), params)
    entry = text[text.index("ENTRY") :]
    copies = [line for line in entry.splitlines() if " copy(" in line and "[64,256]" in line]
    assert not copies, copies
    stored = "u8[64,256]" if "int8" in name else "bf16[64,256]"
    assert stored in entry  # the moments are in the step (the check above is not vacuous)
