"""Cost of changing the learning rate during training: compilations and wall time.

200 jitted Adam steps on an MLP-sized parameter tree, the learning rate changed
every 20 steps, three ways, measured in the same process:

- ``optax.adam`` rebuilt with the new rate (the optimizer is a static argument of the step),
- ``optax.inject_hyperparams(optax.adam)`` with ``state.hyperparams["learning_rate"]`` set,
- ``adamfx.adam`` with ``adamfx.set_hyperparams``.

Prints compilations of the train step and wall time (median of 3 runs) with ratios to the optax
rebuild, writes ``benchmarks/out/hyperparam_changes.{json,png}`` (``--out`` elsewhere).

    python benchmarks/hyperparam_changes.py            # about a minute on 2 CPU cores
    python benchmarks/hyperparam_changes.py --quick    # seconds: a small MLP, 40 steps, a change every 10, one run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import optax

import adamfx

STEPS, EVERY, REPEATS = 200, 20, 3
OUT = Path(__file__).parent / "out"
SIZES = [(784, 512), (512,), (512, 512), (512,), (512, 10), (10,)]


class Compiles:
    """Counts XLA compilations of functions named ``train_step``."""

    def __init__(self):
        self.count = 0

    def __call__(self, event, duration, fun_name="", **kwargs):
        self.count += event == "/jax/core/compile/backend_compile_duration" and "train_step" in fun_name


def params_and_grads():
    keys = jax.random.split(jax.random.key(0), len(SIZES))
    params = [jax.random.normal(k, s) * 0.01 for k, s in zip(keys, SIZES, strict=True)]
    return params, [p * 0.5 + 0.01 for p in params]


def train_step(tx, params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def jit_with(tx):
    """The train step with ``tx`` closed over (not an argument)."""

    def train_step_of_tx(params, state, grads):
        return train_step(tx, params, state, grads)

    return jax.jit(train_step_of_tx)


def lr_at(i):
    return 1e-3 * 0.9 ** (i // EVERY)


def run_optax_rebuild():
    jitted = jax.jit(train_step, static_argnums=0)
    params, grads = params_and_grads()
    tx = optax.adam(lr_at(0))
    state = tx.init(params)
    for i in range(STEPS):
        if i and i % EVERY == 0:
            tx = optax.adam(lr_at(i))  # same state structure, new closure: the step recompiles
        params, state = jitted(tx, params, state, grads)
    return params


def run_inject_hyperparams():
    tx = optax.inject_hyperparams(optax.adam)(learning_rate=lr_at(0))
    jitted = jit_with(tx)
    params, grads = params_and_grads()
    state = tx.init(params)
    for i in range(STEPS):
        if i and i % EVERY == 0:
            state.hyperparams["learning_rate"] = jnp.asarray(lr_at(i))
        params, state = jitted(params, state, grads)
    return params


def run_adamfx():
    tx = adamfx.adam(lr_at(0))
    jitted = jit_with(tx)
    params, grads = params_and_grads()
    state = tx.init(params)
    for i in range(STEPS):
        if i and i % EVERY == 0:
            state = adamfx.set_hyperparams(state, learning_rate=lr_at(i))
        params, state = jitted(params, state, grads)
    return params


def measure(fn):
    times, compiles = [], []
    for _ in range(REPEATS):
        jax.clear_caches()
        counter = Compiles()
        jax.monitoring.register_event_duration_secs_listener(counter)
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
        jax.monitoring.unregister_event_duration_listener(counter)
        compiles.append(counter.count)
    return {"seconds": statistics.median(times), "compiles": max(compiles)}


def main(argv=None):
    global STEPS, EVERY, REPEATS, OUT, SIZES
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small MLP, 40 steps, one run (smoke test)")
    parser.add_argument("--steps", type=int, help=f"jitted steps per run (default {STEPS})")
    parser.add_argument("--every", type=int, help=f"steps between learning-rate changes (default {EVERY})")
    parser.add_argument("--repeats", type=int, help=f"runs per contender, median (default {REPEATS})")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the JSON and PNG")
    args = parser.parse_args(argv)
    STEPS = args.steps or (40 if args.quick else STEPS)
    EVERY = args.every or (10 if args.quick else EVERY)
    REPEATS = args.repeats or (1 if args.quick else REPEATS)
    OUT = args.out
    if args.quick:
        SIZES = [(64, 32), (32,), (32, 10), (10,)]
    runs = {
        "optax.adam rebuilt": run_optax_rebuild,
        "optax.inject_hyperparams": run_inject_hyperparams,
        "adamfx.set_hyperparams": run_adamfx,
    }
    results = {name: measure(fn) for name, fn in runs.items()}
    base = results["optax.adam rebuilt"]["seconds"]
    print(f"{STEPS} steps, learning rate changed every {EVERY}; {platform.machine()}, {jax.devices()[0].platform}")
    print(f"{'':26} {'step compiles':>14} {'seconds':>9} {'vs rebuild':>11}")
    for name, r in results.items():
        print(f"{name:26} {r['compiles']:>14} {r['seconds']:>9.3f} {r['seconds'] / base:>10.2f}x")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "hyperparam_changes.json").write_text(json.dumps({"jax": jax.__version__, "results": results}, indent=2))
    plt.switch_backend("Agg")
    fig, ax = plt.subplots(figsize=(6, 2.8))
    ax.barh(list(results), [r["seconds"] for r in results.values()])
    for i, r in enumerate(results.values()):
        ax.text(r["seconds"], i, f" {r['compiles']} compiles", va="center")
    ax.set_xlabel(f"seconds for {STEPS} steps, lr changed every {EVERY}")
    fig.tight_layout()
    fig.savefig(OUT / "hyperparam_changes.png", dpi=120)


if __name__ == "__main__":
    main()
