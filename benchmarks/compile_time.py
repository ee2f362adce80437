"""Compile time of one jitted optimizer step, against ``optax.adam``, as the number of leaves grows.

Each measurement runs in a fresh Python process (JAX caches nothing across
processes unless asked), which builds the parameter tree, times ``tx.init``
(jitted: trace + compile + run) and then ``jax.jit(step).lower(...)`` (trace and
lowering to StableHLO) and ``.compile()`` (XLA) of the step
``(params, state, grads) -> (params, state)``. The table reports, per tree,
lower + compile seconds and the ratio to ``optax.adam`` measured in the same run
(the configurations of one tree run in turn, so load on a shared machine hits
them alike; ``--repeats`` takes the median).

Trees: ``N x 64`` (``N`` vectors of 64 float32) for ``N`` in ``--leaves``, and
``transformer`` (blocks of 4 matrices 64x256 and 4 vectors of 256: 8 leaves a
block, ``--transformer-leaves`` leaves).

``--step-speed`` instead times one step of fp32, bf16, int8 and factored Adam
on one float32 leaf of ``--step-size`` elements (jitted, donated, interleaved
A B C ...), as ratios to the fp32 adamfx step; with ``--step-tree`` it times
the low-bit and ``fused`` configurations on a whole tree instead (the step at
the scale of a model, where per-leaf costs add up), with each one's compile time.

Run::

    python benchmarks/compile_time.py --quick          # 100 and 400 leaves + transformer
    python benchmarks/compile_time.py                  # 100 ... 1600 leaves + transformer
    python benchmarks/compile_time.py --step-speed     # the low-bit step on one 2^24 leaf
    python benchmarks/compile_time.py --step-speed --step-tree transformer:400   # ... on a 400-leaf tree
    python benchmarks/compile_time.py --quick --baseline /tmp/main   # before/after: main's code in the same run

Writes ``compile_time.json``, ``compile_time.md`` and ``compile_time.png``
(log-log: seconds against leaves) to ``--out`` (default ``benchmarks/out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import harness

LEAVES = [100, 200, 400, 800, 1600]
QUICK_LEAVES = [100, 400]
REFERENCE = "optax.adam"
ADAM_CONFIGS = [
    "optax.adam",
    "optax.adam injected",  # optax.inject_hyperparams(optax.adam): its hyperparameters in the state, as adamfx's are
    "adam",
    "adam torch",
    "adam keras",
    "adamw torch",
    "amsgrad",
    "fused",
    "bf16",
    "int8",
    "factored",
    "int8+factored",
    "fused bf16",
    "fused int8",
    "fused int8 pack 2^16",  # fused(..., pack_below=2**16): the leaves below 2^16 elements packed, one int8 codec
]
# The newer optimizers at their defaults (issue 9 sets no target for them; reported against optax.adam), each with the
# learning rate it is built with (None: the factory's own). A subset of adamfx.OPTIMIZERS on purpose: the rows that
# benchmarks/RESULTS.md reports (the optimizers added after Adam's family; schedule_free_adamw stands for both
# schedule-free ones); the order is adamfx.OPTIMIZERS's.
AT_DEFAULTS = {
    "lion": 1e-4,
    "lamb": 1e-3,
    "adabelief": 1e-3,
    "adopt": 1e-3,
    "ademamix": 1e-3,
    "prodigy": None,
    "schedule_free_adamw": 1e-3,
    "muon": 1e-3,
    "adafactor": None,
}


def configurations() -> list[str]:
    """Adam's configurations, then those of :data:`AT_DEFAULTS` in the order of ``adamfx.OPTIMIZERS``."""
    import adamfx

    unknown = set(AT_DEFAULTS) - set(adamfx.OPTIMIZERS)
    if unknown:
        raise ValueError(f"AT_DEFAULTS names {sorted(unknown)}, which adamfx.OPTIMIZERS does not")
    return [*ADAM_CONFIGS, *(name for name in adamfx.OPTIMIZERS if name in AT_DEFAULTS)]


def optimizer(name: str):
    """The optimizer a configuration name stands for (built in the child process)."""
    import jax.numpy as jnp
    import optax

    import adamfx

    bf16 = dict(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)
    int8 = dict(mu_dtype="int8", nu_dtype="int8")
    builders = {
        "optax.adam": lambda: optax.adam(1e-3),
        "optax.adam injected": lambda: optax.inject_hyperparams(optax.adam)(learning_rate=1e-3),
        "adam": lambda: adamfx.adam(1e-3),
        "adam torch": lambda: adamfx.adam(1e-3, convention="torch"),
        "adam keras": lambda: adamfx.adam(1e-3, convention="keras"),
        "adamw torch": lambda: adamfx.adamw(1e-3, convention="torch"),
        "amsgrad": lambda: adamfx.adam(1e-3, amsgrad=True),
        "fused": lambda: adamfx.fused(adamfx.adam(1e-3)),
        "bf16": lambda: adamfx.adam(1e-3, **bf16),
        "int8": lambda: adamfx.adam(1e-3, **int8),
        "factored": lambda: adamfx.adam(1e-3, nu_dtype="factored"),
        "int8+factored": lambda: adamfx.adam(1e-3, mu_dtype="int8", nu_dtype="factored"),
        "fused bf16": lambda: adamfx.fused(adamfx.adam(1e-3, **bf16)),
        "fused int8": lambda: adamfx.fused(adamfx.adam(1e-3, **int8)),
        "fused int8 pack 2^16": lambda: adamfx.fused(adamfx.adam(1e-3, **int8), pack_below=2**16),
    }
    if name in AT_DEFAULTS:
        learning_rate = AT_DEFAULTS[name]
        return getattr(adamfx, name)(*([] if learning_rate is None else [learning_rate]))
    return builders[name]()


def tree(name: str):
    """``"400x64"``: 400 vectors of 64; ``"transformer:400"``: 50 blocks of 4 matrices 64x256 + 4 vectors."""
    import jax.numpy as jnp

    if name.startswith("transformer:"):
        block = {**{f"w{j}": jnp.zeros((64, 256)) for j in range(4)}, **{f"b{j}": jnp.zeros(256) for j in range(4)}}
        return {f"block{b:04d}": dict(block) for b in range(int(name.split(":")[1]) // 8)}
    n, size = (int(x) for x in name.split("x"))
    return {f"p{i:05d}": jnp.zeros(size) for i in range(n)}


def child(config: str, tree_name: str) -> dict:
    """One measurement in this process: init, lower and compile seconds, and the HLO size."""
    import jax
    import optax

    params = tree(tree_name)
    tx = optimizer(config)
    start = time.perf_counter()
    state = jax.block_until_ready(jax.jit(tx.init)(params))
    init_s = time.perf_counter() - start

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    start, cpu = time.perf_counter(), time.process_time()
    traced = jax.jit(step).trace(params, state, params)
    trace_s = time.perf_counter() - start
    lowered = traced.lower()
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    lowered.compile()
    compile_s = time.perf_counter() - start
    cpu_s = time.process_time() - cpu  # this process's CPU seconds, all threads: less sensitive to others' load
    return dict(
        init_s=init_s,
        trace_s=trace_s,
        lower_s=lower_s,
        compile_s=compile_s,
        total_s=lower_s + compile_s,
        cpu_s=cpu_s,
        hlo_ops=lowered.as_text().count(" = "),
    )


BASELINE = " @baseline"  # suffix of a configuration measured in the --baseline checkout


def measure(config: str, tree_name: str, timeout: float, baseline: Path | None = None) -> dict | None:
    script = __file__
    if config.endswith(BASELINE):  # the same configuration, run from the other checkout's copy of this script
        config, script = config.removesuffix(BASELINE), str(baseline / "benchmarks" / "compile_time.py")
    command = [sys.executable, script, "--child", config, tree_name]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return None
    except subprocess.CalledProcessError as error:
        raise RuntimeError(f"{config} on {tree_name} failed:\n{error.stderr[-2000:]}") from error
    return json.loads(done.stdout.strip().splitlines()[-1])


def sweep(trees: list[str], configs: list[str], repeats: int, timeout: float, baseline: Path | None = None) -> dict:
    results: dict[str, dict[str, dict]] = {}
    for tree_name in trees:
        runs: dict[str, list[dict]] = {config: [] for config in configs}
        for _ in range(repeats):
            for config in configs:  # in turn: load hits every configuration alike
                runs[config].append(measure(config, tree_name, timeout, baseline) or {"total_s": float("inf")})
        results[tree_name] = {}
        for config, samples in runs.items():
            median = {key: statistics.median(s[key] for s in samples if key in s) for key in samples[0]}
            results[tree_name][config] = median
            cpu = median.get("cpu_s", float("nan"))
            print(f"{tree_name:>18} {config:>14}: {median['total_s']:7.2f} s wall, {cpu:7.2f} s CPU", flush=True)
    return results


def markdown(results: dict) -> str:
    trees = list(results)
    header = "| configuration | " + " | ".join(trees) + " |"
    lines = [header, "|" + "---|" * (len(trees) + 1)]
    configs = list(next(iter(results.values())))
    for config in configs:
        cells = []
        for tree_name in trees:
            row, ref = results[tree_name][config], results[tree_name][REFERENCE]
            cells.append(
                f"{row['total_s']:.2f} s ({row['total_s'] / ref['total_s']:.2f}x; "
                f"CPU {row.get('cpu_s', float('nan')) / ref.get('cpu_s', float('nan')):.2f}x; "
                f"HLO {row.get('hlo_ops', 0) / max(ref.get('hlo_ops', 1), 1):.1f}x)"
            )
        lines.append(f"| {config} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("init (jit + run) seconds, ratio to optax.adam's init:")
    lines.append("")
    lines.append(header)
    lines.append("|" + "---|" * (len(trees) + 1))
    for config in configs:
        cells = []
        for tree_name in trees:
            row, ref = results[tree_name][config], results[tree_name][REFERENCE].get("init_s", float("nan"))
            cells.append(f"{row.get('init_s', float('nan')):.2f} s ({row.get('init_s', float('nan')) / ref:.2f}x)")
        lines.append(f"| {config} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sized = [t for t in results if "x" in t and not t.startswith("transformer")]
    if len(sized) < 2:
        return
    leaves = [int(t.split("x")[0]) for t in sized]
    fig, ax = plt.subplots(figsize=(7, 5))
    key = "cpu_s" if "cpu_s" in results[sized[0]][REFERENCE] else "total_s"
    styles = ["-", "--", "-."]  # the colour cycle has 10 colours: a new line style for each round of them
    for i, config in enumerate(results[sized[0]]):
        seconds = [results[t][config][key] for t in sized]
        ax.plot(leaves, seconds, marker="o", linestyle=styles[i // 10 % len(styles)], label=config)
    ax.plot(leaves, [results[sized[0]][REFERENCE][key] * n / leaves[0] for n in leaves], "k:", label="linear")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("leaves (vectors of 64 float32)")
    ax.set_ylabel(f"lower + compile of one jitted step ({'CPU' if key == 'cpu_s' else 'wall'} s)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def timed_steps(runners: dict[str, list], steps: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Times ``steps`` interleaved calls of each ``[step, params, state, grads]`` (the step donates and
    returns ``(params, state)``, kept for the next call); returns the times and their medians."""
    import jax

    def runner(entry):
        def run():
            entry[1], entry[2] = entry[0](entry[1], entry[2], entry[3])
            jax.block_until_ready(entry[1])

        return run

    times = harness.interleaved({name: runner(entry) for name, entry in runners.items()}, samples=steps)
    return times, {name: harness.median(t) for name, t in times.items()}


STEP_STORAGES = ["fp32", "bf16", "int8", "factored"]


def step_speed(size: int, steps: int) -> dict:
    """Seconds per jitted, donated Adam step on one leaf of ``size`` float32, per storage, interleaved."""
    import jax
    import jax.numpy as jnp
    import optax

    import adamfx
    from benchmarks.lowbit_configs import STORAGES

    side = 2 ** (size.bit_length() // 2)
    shape = (size // side, side)  # a matrix, so that factored factors it
    runners = {}
    for name in STEP_STORAGES:
        tx = adamfx.adam(1e-3, **STORAGES[name])

        def step(params, state, grads, tx=tx):
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        step = jax.jit(step, donate_argnums=(0, 1))
        params = jnp.full(shape, 0.5, jnp.float32)
        grads = jax.random.normal(jax.random.key(0), shape) * 1e-3
        runners[name] = [step, params, tx.init(params), grads]

    times, medians = timed_steps(runners, steps)
    return {
        name: {"median_s": m, "ratio": m / medians["fp32"], "iqr": harness.spread(times[name])}
        for name, m in medians.items()
    }


TREE_STEP_CONFIGS = [
    *("optax.adam", "adam", "bf16", "int8", "factored"),
    *("fused", "fused bf16", "fused int8", "fused int8 pack 2^16"),
]


def tree_step_speed(tree_name: str, steps: int, configs: list[str] = TREE_STEP_CONFIGS) -> dict:
    """Seconds per jitted, donated step on the tree ``tree_name`` for each configuration, interleaved,
    with the lower + compile CPU seconds of each (one process: compare them as ratios only)."""
    import jax
    import optax

    params = tree(tree_name)
    runners, compile_s = {}, {}
    for name in configs:
        tx = optimizer(name)

        def step(params, state, grads, tx=tx):
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        state = jax.jit(tx.init)(params)
        start = time.process_time()
        compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params).compile()
        compile_s[name] = time.process_time() - start
        leaves, treedef = jax.tree.flatten(params)  # a gradient of its own per leaf, spanning three decades
        grads = treedef.unflatten(
            [jax.random.normal(jax.random.key(i), p.shape) * 10.0 ** -(1 + i % 3) for i, p in enumerate(leaves)]
        )
        runners[name] = [compiled, jax.tree.map(lambda p: p + 0.5, params), state, grads]

    times, medians = timed_steps(runners, steps)
    return {
        name: {
            "median_s": m,
            "ratio": m / medians["adam"],
            "iqr": harness.spread(times[name]),
            "compile_cpu_s": compile_s[name],
        }
        for name, m in medians.items()
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 and 400 leaves and the transformer tree")
    parser.add_argument("--leaves", type=int, nargs="+", default=None, help=f"leaf counts (default {LEAVES})")
    parser.add_argument("--transformer-leaves", type=int, default=400, help="leaves of the transformer-like tree")
    configs = configurations()
    parser.add_argument("--configs", nargs="+", default=configs, choices=configs, help="configurations")
    parser.add_argument("--repeats", type=int, default=1, help="measurements per configuration and tree (median)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before a measurement counts as inf")
    parser.add_argument("--step-speed", action="store_true", help="time the low-bit Adam step instead")
    parser.add_argument("--step-size", type=int, default=2**24, help="elements of the one leaf (--step-speed)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per storage (--step-speed)")
    parser.add_argument(
        "--step-tree",
        help="with --step-speed: time the low-bit and fused configurations on this tree (e.g. transformer:400)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another checkout (with this script copied into its benchmarks/): each configuration is also "
        f"measured there, right after the same one here, as the row '<config>{BASELINE}'",
    )
    parser.add_argument("--out", type=Path, default=harness.OUT, help="output directory")
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "TREE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    info = harness.machine()
    if args.step_speed and args.step_tree:
        results = tree_step_speed(args.step_tree, args.steps)
        print(f"\nOne jitted, donated step on {args.step_tree}, median of {args.steps} interleaved, vs fp32 adamfx\n")
        print("| configuration | ms per step | ratio to adam | IQR/median | lower + compile (CPU s) |")
        print("|---|---|---|---|---|")
        for name, row in results.items():
            print(
                f"| {name} | {row['median_s'] * 1e3:.2f} | {row['ratio']:.2f}x | {row['iqr']:.2f} "
                f"| {row['compile_cpu_s']:.2f} |"
            )
        harness.write_json(args.out / "tree_step.json", {"machine": info, "tree": args.step_tree, "results": results})
        return
    if args.step_speed:
        results = step_speed(args.step_size, args.steps)
        print(f"\nAdam step on one float32 leaf of {args.step_size} elements, median of {args.steps}, vs fp32 adamfx\n")
        print("| storage | ms per step | ratio to fp32 | IQR/median |\n|---|---|---|---|")
        for name, row in results.items():
            print(f"| {name} | {row['median_s'] * 1e3:.1f} | {row['ratio']:.2f}x | {row['iqr']:.2f} |")
        harness.write_json(args.out / "lowbit_step.json", {"machine": info, "size": args.step_size, "results": results})
        return
    leaves = args.leaves or (QUICK_LEAVES if args.quick else LEAVES)
    configs = [REFERENCE, *[c for c in args.configs if c != REFERENCE]]
    if args.baseline is not None:
        configs = [name for config in configs for name in (config, config + BASELINE)]
    trees = [f"{n}x64" for n in leaves] + [f"transformer:{args.transformer_leaves}"]
    results = sweep(trees, configs, args.repeats, args.timeout, args.baseline)
    text = markdown(results)
    print("\nlower + compile of one jitted step: wall seconds (ratios to optax.adam in the same run: wall; CPU")
    print("seconds of the measuring process; StableHLO ops)\n")
    print(text)
    harness.write_json(args.out / "compile_time.json", {"machine": info, "results": results})
    (args.out / "compile_time.md").write_text(text + "\n")
    plot(results, args.out / "compile_time.png")


if __name__ == "__main__":
    main()
