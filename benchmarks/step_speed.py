"""Speed of one Adam step: adamfx (default, fused, flat parameters) vs optax and PyTorch.

For each case (a parameter tree), every contender is built and warmed up first,
then all are timed interleaved (A B C A B C ...), so that load on a shared
machine hits them alike; the table reports medians. Two modes:

- ``call``: a jitted step ``(params, state, grads) -> (params, state)`` with
  donated params and state, called from Python once per step (PyTorch:
  ``optimizer.step()``);
- ``scan``: the same step inside one jitted ``lax.scan`` over ``--scan-steps``
  steps (time per step; PyTorch has no equivalent and is left out).

Contenders: ``adamfx.adam``; ``adamfx.fused(adamfx.adam)``; ``adamfx.adam`` on
flat parameters (``adamfx.flat_params``: params and grads are one buffer per
dtype, as in a training loop that keeps them flat); ``optax.adam``;
``optax.flatten(optax.adam)``; ``torch.optim.Adam(fused=True)`` and
``(foreach=True)``; on the transformer case also ``adamfx.muon`` (its MLP matrices through
Newton-Schulz, the rest AdamW), ``adamfx.adamw`` and ``newton-schulz`` (a momentum buffer and Muon's
orthogonalization of the same matrices alone: its share of the Muon step); and the memory
floor: a jitted elementwise pass that reads 4 and writes 3 arrays of the total parameter
count (what an fp32 Adam step must move: 28 bytes per parameter). ``GB/s`` is 28 bytes/param over the time.

Run::

    python benchmarks/step_speed.py                 # the default cases, CPU or GPU
    python benchmarks/step_speed.py --quick         # seconds: the smoke test
    python benchmarks/step_speed.py --cases 1x2^28 --peak-gbps 3350 --out $OUT

Writes ``step_speed.json``, ``step_speed.md`` (a summary table) and
``step_speed_<mode>.png`` to ``--out``
(default ``benchmarks/out``).
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

import adamfx

BYTES_PER_PARAM = 28  # fp32 Adam: read p, g, m, v; write p, m, v
CASES = ["1x2^25", "64x2^19", "1000x4096", "1000x64", "transformer"]
QUICK_CASES = ["1x2^12", "64x64"]
TRANSFORMER = dict(blocks=13, d_model=256, heads=4, d_ff=1024)  # 214 leaves, 10.5M params
QUICK_TRANSFORMER = dict(blocks=13, d_model=16, heads=2, d_ff=32, vocab=32, seq=8)
REFERENCE = "optax.adam"
LR = 1e-3


# ---------------------------------------------------------------------------- cases


def parse_size(text: str) -> int:
    base, _, power = text.partition("^")
    return int(base) ** int(power) if power else int(base)


def case_params(name: str, quick: bool) -> dict:
    """The parameter tree of a case: ``"LxN"`` (L leaves of N float32s) or ``"transformer"``."""
    if name == "transformer":
        import models  # flax: only needed for this case

        return models.transformer(models.TransformerConfig(**(QUICK_TRANSFORMER if quick else TRANSFORMER)))[1]
    leaves, _, size = name.partition("x")
    if not size:
        raise SystemExit(f"--cases: {name!r} is not 'transformer' or LxN (e.g. 64x2^19)")
    width = len(str(int(leaves)))
    return {f"p{i:0{width}d}": jnp.full((parse_size(size),), 0.5, jnp.float32) for i in range(int(leaves))}


def grads_like(params):
    return jax.tree.map(lambda p: jnp.full(p.shape, 1e-3, p.dtype), params)


def copy(tree):
    return jax.tree.map(jnp.copy, tree)


# ---------------------------------------------------------------------------- JAX contenders


def _step(tx):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def _floor_step(params, state, grads):
    """Reads p, m, v, g and writes p, m, v: the bytes of an Adam step with the least arithmetic."""
    m, v = state
    m = 0.9 * m + 0.1 * grads
    v = 0.999 * v + 0.001 * grads * grads
    return params - LR * (m + v), (m, v)


def _scanned(step, steps):
    def run(params, state, grads):
        (params, state), _ = lax.scan(lambda carry, _: (step(*carry, grads), None), (params, state), length=steps)
        return params, state

    return run


def jax_runner(step, params, state, grads, mode, scan_steps):
    """A callable that runs one timed sample (one step, or one scan of ``scan_steps``) and blocks."""
    fn = jax.jit(step if mode == "call" else _scanned(step, scan_steps), donate_argnums=(0, 1))
    box = [(params, state)]

    def run():
        box[0] = fn(*box[0], grads)
        jax.block_until_ready(box[0])

    return run


def muon_mask(params):
    """Muon's leaves in the transformer: the 2-D kernels, less the embeddings and the output head."""

    def chosen(path, p):
        return p.ndim == 2 and path[0].key not in ("embed", "head", "pos")

    return jax.tree_util.tree_map_with_path(chosen, params)


def jax_contenders(params):
    """name -> (step, params, state, grads) builders; each builds fresh buffers."""

    def tree(tx):
        return lambda: (_step(tx), copy(params), tx.init(params), grads_like(params))

    def flat(tx):
        def build():
            flat_params, _ = adamfx.flat_params(params)
            flat_grads, _ = adamfx.flat_params(grads_like(params))
            return _step(tx), copy(flat_params), tx.init(flat_params), flat_grads

        return build

    def floor():
        n = sum(p.size for p in jax.tree.leaves(params))
        full = lambda value: jnp.full((n,), value, jnp.float32)
        return _floor_step, full(0.5), (full(0.0), full(0.0)), full(1e-3)

    return {
        "adamfx.adam": tree(adamfx.adam(LR)),
        "adamfx.fused(adam)": tree(adamfx.fused(adamfx.adam(LR))),
        "adamfx.adam flat": flat(adamfx.adam(LR)),
        "optax.adam": tree(optax.adam(LR)),
        "optax.flatten(adam)": tree(optax.flatten(optax.adam(LR))),
        "floor": floor,
        # muon (the transformer case adds these, see MUON_CONTENDERS)
        "adamfx.adamw": tree(adamfx.adamw(LR)),
        "adamfx.muon": tree(adamfx.muon(LR, muon_mask=muon_mask)),
        # A momentum buffer in front keeps Newton-Schulz inside lax.scan (of constant gradients alone, XLA
        # hoists it out of the loop); the buffer is one elementwise pass over the matrices.
        "newton-schulz": tree(optax.masked(adamfx.chain(optax.trace(0.95), adamfx.orthogonalize()), muon_mask)),
        # Not in the default set (see --contenders): fused with every leaf packed.
        "adamfx.fused(adam, pack all)": tree(adamfx.fused(adamfx.adam(LR), pack_below=None)),
    }


DEFAULT_CONTENDERS = [
    "adamfx.adam",
    "adamfx.fused(adam)",
    "adamfx.adam flat",
    "optax.adam",
    "optax.flatten(adam)",
    "torch fused",
    "torch foreach",
    "floor",
]

MUON_CONTENDERS = ["adamfx.adamw", "adamfx.muon", "newton-schulz"]  # added on the transformer case


# ---------------------------------------------------------------------------- PyTorch contenders


def torch_device():
    """The torch device matching JAX's backend, or None (torch missing, or no such device)."""
    try:
        import torch
    except ImportError:
        return None
    if jax.default_backend() == "cpu":
        return "cpu"
    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else None


def torch_runner(params, flavour: str, device: str):
    import torch

    tensors = [torch.nn.Parameter(torch.full(p.shape, 0.5, device=device)) for p in jax.tree.leaves(params)]
    for t in tensors:
        t.grad = torch.full(t.shape, 1e-3, device=device)
    opt = torch.optim.Adam(tensors, lr=LR, **{flavour: True})

    def run():
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return run


# ---------------------------------------------------------------------------- measuring


def measure_case(name, params, mode, contenders, args, device):
    if name == "transformer" and not args.no_muon:
        contenders = list(dict.fromkeys([*contenders, *MUON_CONTENDERS]))
    builders = jax_contenders(params)
    runners = {}
    for contender in contenders:
        if contender.startswith("torch"):
            if mode == "call" and device is not None:
                runners[contender] = torch_runner(params, contender.split()[1], device)
        else:
            step, p, s, g = builders[contender]()
            runners[contender] = jax_runner(step, p, s, g, mode, args.scan_steps)
    samples = args.samples if mode == "call" else args.scan_samples
    # PyTorch's first few CPU steps can be slow by orders of magnitude on a loaded machine.
    times = harness.interleaved(runners, samples, warmup=5 if mode == "call" else 1)
    per_step = args.scan_steps if mode == "scan" else 1
    n_params = sum(p.size for p in jax.tree.leaves(params))
    rows = []
    for contender, values in times.items():
        values = [v / per_step for v in values]
        seconds = harness.median(values)
        gbps = BYTES_PER_PARAM * n_params / seconds / 1e9
        rows.append(
            {
                "case": name,
                "mode": mode,
                "contender": contender,
                "leaves": len(jax.tree.leaves(params)),
                "params": n_params,
                "median_s": seconds,
                "iqr_rel": harness.spread(values),
                "samples_s": values,
                "gbps": gbps,
                "peak_fraction": gbps / args.peak_gbps if args.peak_gbps else None,
            }
        )
    by_name = {r["contender"]: r["median_s"] for r in rows}
    for r in rows:
        for ref in (REFERENCE, "torch fused", "floor", "adamfx.adamw", "adamfx.muon"):
            r[f"vs {ref}"] = r["median_s"] / by_name[ref] if ref in by_name else None
    if "adamfx.muon" in by_name and "adamfx.adamw" in by_name and "newton-schulz" in by_name:
        print(
            f"{name} {mode}: adamfx.muon {by_name['adamfx.muon'] / by_name['adamfx.adamw']:.2f}x adamfx.adamw; "
            f"Newton-Schulz alone {by_name['newton-schulz'] / by_name['adamfx.muon']:.0%} of the Muon step",
            flush=True,
        )
    del runners, builders
    gc.collect()
    return rows


def print_rows(rows, peak):
    header = ["case", "mode", "contender", "ms/step", "iqr", "x optax.adam", "x torch fused", "x floor", "GB/s"]
    if peak:
        header.append("% peak")
    fmt = lambda x: "-" if x is None else f"{x:.2f}"
    body = []
    for r in rows:
        line = [r["case"], r["mode"], r["contender"], f"{r['median_s'] * 1e3:.3f}", f"{100 * r['iqr_rel']:.0f}%"]
        line += [fmt(r["vs optax.adam"]), fmt(r["vs torch fused"]), fmt(r["vs floor"]), f"{r['gbps']:.1f}"]
        if peak:
            line.append(f"{100 * r['peak_fraction']:.0f}%")
        body.append(line)
    print(harness.table(body, header), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny cases and few samples (smoke test)")
    parser.add_argument("--cases", "--sizes", help="comma list: LxN (e.g. 1x2^28) and/or 'transformer'")
    parser.add_argument("--modes", default="call,scan", help="comma list of call, scan")
    parser.add_argument("--contenders", help="comma list (default: all but 'adamfx.fused(adam, pack all)')")
    parser.add_argument("--samples", type=int, help="timed calls per contender in call mode (default 30)")
    parser.add_argument("--scan-samples", type=int, help="timed scans per contender (default 5)")
    parser.add_argument("--scan-steps", type=int, help="steps per lax.scan (default 50)")
    parser.add_argument("--no-muon", action="store_true", help="leave the Muon rows out of the transformer case")
    parser.add_argument("--peak-gbps", type=float, help="the device's peak memory bandwidth, for '%% peak'")
    parser.add_argument("--out", type=Path, default=harness.OUT, help="folder for JSON and PNG")
    args = parser.parse_args(argv)
    args.samples = args.samples or (3 if args.quick else 30)
    args.scan_samples = args.scan_samples or (2 if args.quick else 5)
    args.scan_steps = args.scan_steps or (5 if args.quick else 50)
    cases = args.cases.split(",") if args.cases else (QUICK_CASES if args.quick else CASES)
    contenders = args.contenders.split(",") if args.contenders else DEFAULT_CONTENDERS
    device = torch_device()
    info = harness.machine()
    print(f"{info['date']}  {info['cpu']}  {info['backend']}: {info['device_kind']}  load {info['load_avg']}")
    if device is None:
        print("torch contenders skipped: no torch device of JAX's kind")
    rows = []
    payload = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}, "results": rows}
    for name in cases:
        params = case_params(name, args.quick)
        for mode in args.modes.split(","):
            case_rows = measure_case(name, params, mode, contenders, args, device)
            print_rows(case_rows, args.peak_gbps)
            rows += case_rows
            harness.write_json(args.out / "step_speed.json", payload)  # after each case: partial runs count
    summary = pivot(rows)
    print(summary)
    (args.out / "step_speed.md").write_text(summary + "\n")
    try:
        plot(rows, args, info)
    except ImportError as error:
        print(f"no PNG: {error}")
    print(f"wrote {args.out / 'step_speed.json'} and step_speed_<mode>.png")
    return payload


def pivot(rows) -> str:
    """A markdown table: one row per (case, mode), one column per contender: ms per step and x optax.adam."""
    contenders = list(dict.fromkeys(r["contender"] for r in rows))
    lines = ["| case | mode | " + " | ".join(contenders) + " |", "|---|---|" + "---|" * len(contenders)]
    for case, mode in dict.fromkeys((r["case"], r["mode"]) for r in rows):
        cells = {r["contender"]: r for r in rows if r["case"] == case and r["mode"] == mode}
        fmt = lambda r: f"{r['median_s'] * 1e3:.3g} ms ({r['vs optax.adam']:.2f}x)"
        lines.append(
            f"| {case} | {mode} | " + " | ".join(fmt(cells[c]) if c in cells else "-" for c in contenders) + " |"
        )
    return "\n".join(lines)


def plot(rows, args, info):
    for mode in args.modes.split(","):
        ratios = {r["case"]: {} for r in rows if r["mode"] == mode and r["vs optax.adam"] is not None}
        for r in rows:
            if r["mode"] == mode and r["vs optax.adam"] is not None and math.isfinite(r["vs optax.adam"]):
                ratios[r["case"]][r["contender"]] = r["vs optax.adam"]
        harness.bar_chart(
            args.out / f"step_speed_{mode}.png",
            ratios,
            f"Adam step time / optax.adam ({mode}; lower is faster) - {info['device_kind']}, {info['date'][:10]}",
            "time / optax.adam (log scale)",
            log=True,
        )


if __name__ == "__main__":
    main()
