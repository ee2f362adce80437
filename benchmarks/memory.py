"""Optimizer-state memory and step speed of every moment storage (fp32, bf16, int8, factored).

Three measurements, each printed as a table and written to ``benchmarks/out/memory.json``
(plots: ``benchmarks/out/memory.png``):

1. State bytes per parameter, summed over the leaves of the *actual* state pytree
   (``tx.init`` traced with ``jax.eval_shape``: the real structure, shapes and
   dtypes, nothing allocated) for a GPT-2-small-shaped parameter tree (124M
   parameters, 149 leaves: embeddings, 12 blocks of attention/MLP matrices,
   biases and layer norms) and for one 2^25 leaf.
2. Peak memory of one jitted, donated optimizer step (``tx.update`` +
   ``optax.apply_updates`` on given gradients) on that 124M model, one fresh
   subprocess per storage: the process's peak RSS (``ru_maxrss``) minus its RSS
   once parameters and gradients exist, next to XLA's compiled memory analysis
   (state in/out and temporaries).
3. Step time on one 8192 x 4096 leaf (2^25 parameters): all contenders built
   first, then timed interleaved (A B C A B C ...), median of ``--steps`` steps
   after warm-up, donated buffers, ratios against fp32 ``adamfx.adam`` and
   ``optax.adam`` measured in the same process.

Run: ``python benchmarks/memory.py`` (about 5 minutes on 2 CPU cores; ``--quick``
skips the 124M peak-memory runs; ``--lowbit-speed`` runs only the step speed, on one
4096 x 4096 leaf, 2^24 parameters; ``--region-analysis`` adds each storage jitted with
``compiler_options={"xla_cpu_copy_insertion_use_region_analysis": True}``, rows ``"<storage> +ra"``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import adamfx
from benchmarks.lowbit_configs import STORAGES as ALL_STORAGES

OUT = Path(__file__).resolve().parent / "out"

STORAGES = {name: kwargs for name, kwargs in ALL_STORAGES.items() if name != "int8 nearest"}
PEERS = {
    "optax.adam": lambda: optax.adam(1e-3),
    "optax.adam mu bf16": lambda: optax.adam(1e-3, mu_dtype=jnp.bfloat16),
    "optax.adafactor": lambda: optax.adafactor(1e-3),
}
PEAK_CONFIGS = ["fp32", "bf16", "int8", "factored", "int8 + factored"]
SPEED_CONFIGS = ["fp32", "bf16", "int8", "factored"]


def optimizer(name: str):
    return PEERS[name]() if name in PEERS else adamfx.adam(1e-3, **STORAGES[name])


def gpt2_small(vocab: int = 50257, context: int = 1024, width: int = 768, layers: int = 12) -> dict:
    """Parameter shapes of GPT-2 small (124M parameters)."""
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    tree = {"wte": f32(vocab, width), "wpe": f32(context, width), "ln_f": {"scale": f32(width), "bias": f32(width)}}
    for i in range(layers):
        tree[f"block{i}"] = {
            "ln1": {"scale": f32(width), "bias": f32(width)},
            "qkv": {"kernel": f32(width, 3 * width), "bias": f32(3 * width)},
            "proj": {"kernel": f32(width, width), "bias": f32(width)},
            "ln2": {"scale": f32(width), "bias": f32(width)},
            "fc": {"kernel": f32(width, 4 * width), "bias": f32(4 * width)},
            "out": {"kernel": f32(4 * width, width), "bias": f32(width)},
        }
    return tree


def n_params(tree) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(tree))


def state_bytes(tx, params) -> int:
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(jax.eval_shape(tx.init, params)))


def bytes_table() -> dict:
    models = {
        "gpt2-small (124M, 149 leaves)": gpt2_small(),
        "one 8192x4096 leaf": jax.ShapeDtypeStruct((8192, 4096), jnp.float32),
    }
    rows = {}
    print("\n## State bytes per parameter (from the state pytree)\n")
    print(f"| storage | {' | '.join(models)} |\n|---|" + "---|" * len(models))
    for name in [*STORAGES, *PEERS]:
        tx = optimizer(name)
        rows[name] = {model: state_bytes(tx, params) / n_params(params) for model, params in models.items()}
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in rows[name].values()) + " |")
    return rows


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_child(name: str) -> dict:
    """One donated step on the 124M model in this (fresh) process; memory in bytes."""
    shapes = gpt2_small()
    params = jax.tree.map(lambda s: jnp.full(s.shape, 0.01, s.dtype), shapes)
    leaves, treedef = jax.tree.flatten(shapes)
    grads = treedef.unflatten([jnp.full(s.shape, 1e-3 * (1 + i % 7), s.dtype) for i, s in enumerate(leaves)])
    jax.block_until_ready((params, grads))
    tx = optimizer(name)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state_shapes = jax.eval_shape(tx.init, shapes)
    compiled = step.lower(shapes, state_shapes, shapes).compile()
    analysis = compiled.memory_analysis()
    baseline = rss_bytes()
    resource_peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    state = jax.jit(tx.init)(params)
    jax.block_until_ready(state)
    for _ in range(2):
        params, state = compiled(params, state, grads)
        jax.block_until_ready((params, state))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "rss_with_params_and_grads": baseline,
        "peak_rss": peak,
        "peak_minus_baseline": peak - max(baseline, resource_peak_before) if peak > resource_peak_before else 0,
        "state_bytes": sum(x.nbytes for x in jax.tree.leaves(state)),
        "xla_argument_bytes": analysis.argument_size_in_bytes,
        "xla_output_bytes": analysis.output_size_in_bytes,
        "xla_alias_bytes": analysis.alias_size_in_bytes,
        "xla_temp_bytes": analysis.temp_size_in_bytes,
        "n_params": n_params(shapes),
    }


def peak_table() -> dict:
    rows = {}
    print("\n## One donated optimizer step on GPT-2 small (124M params), one subprocess each\n")
    print("| storage | state MB | XLA temp MB | peak RSS MB | peak - RSS(params+grads) MB | vs fp32 |")
    print("|---|---|---|---|---|---|")
    for name in PEAK_CONFIGS:
        out = subprocess.run(
            [sys.executable, __file__, "--peak-child", name], capture_output=True, text=True, check=True
        )
        rows[name] = json.loads(out.stdout.strip().splitlines()[-1])
    mb = 2**20
    for name, r in rows.items():
        ratio = r["peak_minus_baseline"] / rows["fp32"]["peak_minus_baseline"]
        print(
            f"| {name} | {r['state_bytes'] / mb:.0f} | {r['xla_temp_bytes'] / mb:.0f} | {r['peak_rss'] / mb:.0f} "
            f"| {r['peak_minus_baseline'] / mb:.0f} | {ratio:.2f} |"
        )
    return rows


# XLA:CPU's default copy insertion cannot order the parameter update (which reads the old low-bit moments to
# recompute the new ones) before the encoder that overwrites them in place, so it copies the donated moments
# every step; its region-based analysis orders them and drops the copies (see benchmarks/RESULTS.md).
REGION_ANALYSIS = {"xla_cpu_copy_insertion_use_region_analysis": True}


def speed_table(steps: int, shape: tuple[int, int] = (8192, 4096), region_analysis: bool = False) -> dict:
    """Median step time per contender; ``region_analysis`` adds each low-bit storage jitted with
    :data:`REGION_ANALYSIS` (rows ``"<storage> +ra"``)."""
    contenders = {name: (optimizer(name), {}) for name in [*SPEED_CONFIGS, "optax.adam"]}
    if region_analysis:
        for name in SPEED_CONFIGS:
            contenders[f"{name} +ra"] = (optimizer(name), REGION_ANALYSIS)
    runners = {}
    for name, (tx, options) in contenders.items():

        @functools.partial(jax.jit, donate_argnums=(0, 1), compiler_options=options or None)
        def step(params, state, grads, tx=tx):
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        params = jnp.ones(shape)
        grads = jax.random.normal(jax.random.key(0), shape) * 1e-2
        state = tx.init(params)
        for _ in range(3):  # warm-up (compiles; first-touch of the state buffers)
            params, state = step(params, state, grads)
        jax.block_until_ready(params)
        runners[name] = [step, params, state, grads]
    times = {name: [] for name in runners}
    for _ in range(steps):
        for name, runner in runners.items():
            step, params, state, grads = runner
            start = time.perf_counter()
            params, state = step(params, state, grads)
            jax.block_until_ready((params, state))
            times[name].append(time.perf_counter() - start)
            runner[1], runner[2] = params, state
    med = {name: float(np.median(t)) for name, t in times.items()}
    spread = {name: float(np.percentile(t, 75) - np.percentile(t, 25)) for name, t in times.items()}
    size = f"{shape[0]}x{shape[1]} leaf (2^{int(np.log2(shape[0] * shape[1]))} params)"
    print(f"\n## Adam step on one {size}, median of {steps} interleaved steps\n")
    print("| storage | ms | IQR ms | vs fp32 adamfx | vs optax.adam |\n|---|---|---|---|---|")
    for name in runners:
        print(
            f"| {name} | {med[name] * 1e3:.1f} | {spread[name] * 1e3:.1f} | {med[name] / med['fp32']:.2f} "
            f"| {med[name] / med['optax.adam']:.2f} |"
        )
    return {"median_s": med, "iqr_s": spread, "steps": steps, "device": str(jax.devices()[0])}


def plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    names = list(results["bytes_per_param"])
    model = next(iter(results["bytes_per_param"][names[0]]))
    axes[0].barh(names, [results["bytes_per_param"][n][model] for n in names])
    axes[0].set_xlabel("optimizer-state bytes / parameter (GPT-2 small)")
    axes[0].invert_yaxis()
    if results.get("peak"):
        peak = results["peak"]
        axes[1].bar(
            list(peak), [r["peak_minus_baseline"] / 2**20 for r in peak.values()], label="peak RSS - params/grads"
        )
        axes[1].bar(list(peak), [r["state_bytes"] / 2**20 for r in peak.values()], alpha=0.6, label="state")
        axes[1].set_ylabel("MB")
        axes[1].set_title("one donated step, 124M params")
        axes[1].legend()
        axes[1].tick_params(axis="x", rotation=30)
    speed = results["speed"]["median_s"]
    axes[2].bar(list(speed), [v * 1e3 for v in speed.values()])
    axes[2].set_ylabel("ms per step (2^25 params)")
    axes[2].tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(OUT / "memory.png", dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peak-child", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="skip the 124M peak-memory subprocesses")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per contender")
    parser.add_argument(
        "--lowbit-speed", action="store_true", help="only the step speed, on one 4096x4096 leaf (2^24 params)"
    )
    parser.add_argument(
        "--region-analysis",
        action="store_true",
        help="with --lowbit-speed: also time each storage jitted with XLA:CPU's region-based copy insertion",
    )
    args = parser.parse_args()
    if args.lowbit_speed:
        print(f"device: {jax.devices()[0]}, jax {jax.__version__}")
        speed_table(args.steps, (4096, 4096), region_analysis=args.region_analysis)
        return
    if args.peak_child:
        print(json.dumps(peak_child(args.peak_child)))
        return
    OUT.mkdir(exist_ok=True)
    print(f"device: {jax.devices()[0]}, jax {jax.__version__}")
    results = {"bytes_per_param": bytes_table()}
    results["peak"] = {} if args.quick else peak_table()
    results["speed"] = speed_table(args.steps)
    (OUT / "memory.json").write_text(json.dumps(results, indent=2))
    plot(results)
    print(f"\nwrote {OUT / 'memory.json'} and {OUT / 'memory.png'}")


if __name__ == "__main__":
    main()
