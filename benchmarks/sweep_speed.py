"""Speed of a vectorized sweep: K members in one vmapped program vs K sequential jitted runs.

The digits MLP of ``examples/sensitivity.py`` (64 -> 128 -> 10, 9.6K params,
4 leaves) with ``adamfx.adam`` at K learning rates. Four workloads, each run
for ``--steps`` steps by every member:

- ``update``: the optimizer update alone (``tx.update`` + ``apply_updates`` on fixed gradients);
- ``train, batch 32``: the whole training step (forward, backward, update) on a mini-batch
  of 32, each member its own batches (as in a sweep over seeds);
- ``train, full batch``: the same on the whole training split (1078 examples), shared by all members;
- ``train, full batch, x per member``: the same with the batch copied per member (``in_axes=0`` instead of
  ``None``), which keeps XLA from merging the members' first-layer matmuls into one whose output it must transpose.

Contenders: ``vmapped``, one jitted ``jax.vmap`` over the K members
(:func:`adamfx.sweep` state, :func:`adamfx.sweep_params` params); and
``sequential``, the same jitted single-member step run for each member in turn
(one program too: the learning rate is a value in the state). Two modes, as in
``step_speed.py``: ``call`` (one jitted call per step, from Python) and
``scan`` (all the steps in one jitted ``lax.scan``). Compilation is excluded
(warm-up), the contenders are timed interleaved in one process, medians
reported, and the number of times each program was traced is checked (1).

Run::

    python benchmarks/sweep_speed.py              # K = 16, both modes
    python benchmarks/sweep_speed.py --quick      # seconds: the smoke test

Writes ``sweep_speed.json`` to ``--out`` (default ``benchmarks/out``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "examples"))

import harness  # noqa: E402
from sensitivity import init_params, load_data, train_step  # noqa: E402  (the example's model and step)

import adamfx  # noqa: E402

WORKLOADS = ("update", "train, batch 32", "train, full batch", "train, full batch, x per member")
MODES = ("call", "scan")


def member(tree, k):
    return jax.tree.map(lambda x: x[k], tree)


def update_step(tx):
    def step(params, state, grads, x, y):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def whole_step(tx):
    step = train_step(tx)

    def run(params, state, grads, x, y):
        params, state, _ = step(params, state, x, y)
        return params, state

    return run


# How an input is laid out: shared by every member and step, one per member, or one per step and member.
SHARED, MEMBER, STEP = "shared", "member", "step"


def inputs(workload: str, size: int, steps: int, data, seed: int = 0):
    """``(grads, x, y)`` and their layouts: SHARED (as is), MEMBER (a leading members axis) or STEP
    (leading ``(steps, members)`` axes)."""
    (x_train, y_train), _, _ = data
    rng = np.random.default_rng(seed)
    if workload == "update":
        like = init_params(jax.random.key(0))
        grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal((steps, size, *p.shape)), jnp.float32), like)
        return (grads, None, None), (STEP, SHARED, SHARED)
    if workload == "train, full batch":
        return (None, jnp.asarray(x_train), jnp.asarray(y_train)), (SHARED, SHARED, SHARED)
    if workload == "train, full batch, x per member":
        x, y = (jnp.asarray(np.broadcast_to(a, (size, *a.shape))) for a in (x_train, y_train))
        return (None, x, y), (SHARED, MEMBER, MEMBER)
    idx = rng.integers(0, len(x_train), (steps, size, 32))
    return (None, jnp.asarray(x_train[idx]), jnp.asarray(y_train[idx])), (SHARED, STEP, STEP)


def _of_member(values, layouts, k):
    """Member k's inputs: STEP ones keep their steps axis, MEMBER ones lose theirs (and become SHARED)."""
    pick = {MEMBER: lambda v: v[k], STEP: lambda v: v[:, k], SHARED: lambda v: v}
    return tuple(jax.tree.map(pick[layout], v) for v, layout in zip(values, layouts, strict=True))


def _at_step(values, layouts, t):
    return tuple(
        jax.tree.map(lambda v: v[t], v) if layout == STEP else v for v, layout in zip(values, layouts, strict=True)
    )


def contenders(step, params, states, values, layouts, steps: int, mode: str, traces: dict):
    """``{name: run}``; each run takes ``steps`` steps of every member and blocks until done.

    Inputs are sliced per step and member before timing, so the runs time the jitted programs only.
    """
    size = jax.tree.leaves(params)[0].shape[0]
    members = [(member(params, k), member(states, k), _of_member(values, layouts, k)) for k in range(size)]
    member_layouts = tuple(SHARED if layout == MEMBER else layout for layout in layouts)

    def counted(name, fn):
        def traced(*args):
            traces[name] = traces.get(name, 0) + 1
            return fn(*args)

        return traced

    vstep = jax.vmap(step, in_axes=(0, 0, *(None if layout == SHARED else 0 for layout in layouts)))
    if mode == "call":
        vmapped, single = jax.jit(counted("vmapped", vstep)), jax.jit(counted("sequential", step))
        at = [_at_step(values, layouts, t) for t in range(steps)]
        member_at = [[_at_step(ins, member_layouts, t) for t in range(steps)] for _, _, ins in members]

        def run_vmapped():
            p, s = params, states
            for t in range(steps):
                p, s = vmapped(p, s, *at[t])
            jax.block_until_ready(p)

        def run_sequential():
            for (p, s, _), per_step in zip(members, member_at, strict=True):
                for t in range(steps):
                    p, s = single(p, s, *per_step[t])
                jax.block_until_ready(p)

        return {"vmapped": run_vmapped, "sequential": run_sequential}

    def scanned(fn, layouts):
        """``fn`` for all the steps in one ``lax.scan`` over the STEP inputs (steps axis first)."""

        def run(p, s, *values):
            def body(carry, at):
                merged = tuple(a if layout == STEP else v for a, v, layout in zip(at, values, layouts, strict=True))
                return fn(*carry, *merged), None

            stepped = tuple(v if layout == STEP else None for v, layout in zip(values, layouts, strict=True))
            return jax.lax.scan(body, (p, s), stepped, length=steps)[0]

        return run

    vmapped = jax.jit(counted("vmapped", scanned(vstep, layouts)))
    single = jax.jit(counted("sequential", scanned(step, member_layouts)))

    def run_vmapped():
        jax.block_until_ready(vmapped(params, states, *values))

    def run_sequential():
        for p, s, ins in members:
            jax.block_until_ready(single(p, s, *ins))

    return {"vmapped": run_vmapped, "sequential": run_sequential}


def measure(size: int, steps: int, samples: int, modes, workloads) -> list[dict]:
    data = load_data(0)
    tx = adamfx.adam(1e-3)
    lrs = np.logspace(-4, -1, size)
    params = adamfx.sweep_params(init_params, keys=jax.random.split(jax.random.key(0), size))
    states = adamfx.sweep(jax.vmap(tx.init)(params), batched=True, learning_rate=lrs)
    rows = []
    for workload in workloads:
        step = update_step(tx) if workload == "update" else whole_step(tx)
        values, layouts = inputs(workload, size, steps, data)
        for mode in modes:
            traces: dict = {}
            runners = contenders(step, params, states, values, layouts, steps, mode, traces)
            times = harness.interleaved(runners, samples)
            base = harness.median(times["sequential"])
            for name, seconds in times.items():
                rows.append(
                    {
                        "workload": workload,
                        "mode": mode,
                        "contender": name,
                        "members": size,
                        "steps": steps,
                        "median_s": harness.median(seconds),
                        "iqr_over_median": harness.spread(seconds),
                        "vs sequential": harness.median(seconds) / base,
                        "traces": traces.get(name, 0),
                    }
                )
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few members, steps and samples (smoke test)")
    parser.add_argument("--members", type=int, help="K, the members of the sweep (default 16)")
    parser.add_argument("--steps", type=int, help="steps per run (default 20)")
    parser.add_argument("--samples", type=int, help="timed runs per contender (default 15)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma list of call, scan")
    parser.add_argument("--workloads", default=";".join(WORKLOADS), help="semicolon list of " + "; ".join(WORKLOADS))
    parser.add_argument("--out", type=Path, default=harness.OUT, help="folder for the JSON")
    args = parser.parse_args(argv)
    size = args.members or (4 if args.quick else 16)
    steps = args.steps or (3 if args.quick else 20)
    samples = args.samples or (2 if args.quick else 15)
    rows = measure(size, steps, samples, args.modes.split(","), [w.strip() for w in args.workloads.split(";")])
    print(
        harness.table(
            [
                [
                    r["workload"],
                    r["mode"],
                    r["contender"],
                    f"{1e3 * r['median_s']:.2f}",
                    f"{r['iqr_over_median']:.0%}",
                    f"{r['vs sequential']:.3f}",
                    r["traces"],
                ]
                for r in rows
            ],
            ["workload", "mode", "contender", "ms/run", "IQR", "x sequential", "traces"],
        )
    )
    payload = {"machine": harness.machine(), "results": rows}
    harness.write_json(args.out / "sweep_speed.json", payload)
    print(f"wrote {args.out / 'sweep_speed.json'}")
    return payload


if __name__ == "__main__":
    main()
