"""End-to-end speed of a Flax training step (forward, backward, update): adamfx vs optax.

The same transformer (``models.py``; 214 parameter leaves by default), the same
batch and the same jitted step ``(params, opt_state, tokens) -> (params,
opt_state, loss)`` with donated params and optimizer state; only the optimizer
and the parameter layout change:

- ``optax.adam`` / ``adamfx.adam`` / ``adamfx.fused(adam)``: params as the
  model's tree of arrays;
- ``... flat``: params kept as ``adamfx.flat_params`` buffers (one per dtype) and
  viewed as a tree inside the step, so the step passes O(1) buffers.

Contenders are timed interleaved (A B C A B C ...), medians reported. Every
Adam contender runs the same number of steps on the same batch, so their last
losses must agree (to float32 rounding): the table shows them. ``floor: p - lr g``
(plain SGD, no optimizer state) bounds what any optimizer could gain.

Run::

    python benchmarks/train_step.py                  # d_model 32 and 128
    python benchmarks/train_step.py --quick          # seconds
    python benchmarks/train_step.py --d-model 16,32,64,128,256 --batch 16

Writes ``train_step.json`` and ``train_step.png`` to ``--out`` (default ``benchmarks/out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import models

import adamfx

LR = 1e-3
REFERENCE = "optax.adam"


def make_step(graphdef, tx, unflatten=None):
    view = unflatten if unflatten is not None else (lambda params: params)

    def step(params, opt_state, tokens):
        loss, grads = jax.value_and_grad(lambda p: models.loss_fn(graphdef, view(p), tokens))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def contenders(graphdef, params):
    """name -> (jitted step, params, opt state)."""
    flat, unflatten = adamfx.flat_params(params)
    copy = lambda tree: jax.tree.map(jnp.copy, tree)
    out = {}
    for name, tx in [
        ("optax.adam", optax.adam(LR)),
        ("adamfx.adam", adamfx.adam(LR)),
        ("adamfx.fused(adam)", adamfx.fused(adamfx.adam(LR))),
    ]:
        out[name] = (make_step(graphdef, tx), copy(params), tx.init(params))
    for name, tx in [("optax.adam flat", optax.adam(LR)), ("adamfx.adam flat", adamfx.adam(LR))]:
        out[name] = (make_step(graphdef, tx, unflatten), copy(flat), tx.init(flat))
    # Not an Adam: p -= lr g, no state. What the step costs without an optimizer worth the name.
    sgd = optax.sgd(LR)
    out["floor: p - lr g"] = (make_step(graphdef, sgd), copy(params), sgd.init(params))
    return out


def runner(entry, tokens):
    step, params, state = entry
    box = [params, state, None]

    def run():
        box[:] = step(box[0], box[1], tokens)
        jax.block_until_ready(box[2])

    return run, box


def measure(cfg, batch_size, samples):
    """Rows (one per contender) for one model size, all contenders timed interleaved."""
    graphdef, params = models.transformer(cfg)
    tokens = models.batch(cfg, batch_size)
    n_leaves, n_params = len(jax.tree.leaves(params)), sum(p.size for p in jax.tree.leaves(params))
    print(f"model: {cfg}, {n_leaves} leaves, {n_params} params; batch {batch_size}", flush=True)
    entries = contenders(graphdef, params)
    runs = {name: runner(entry, tokens) for name, entry in entries.items()}
    times = harness.interleaved({name: run for name, (run, _) in runs.items()}, samples, warmup=3)
    reference = harness.median(times[REFERENCE])
    model = {**dataclasses.asdict(cfg), "leaves": n_leaves, "params": n_params, "batch": batch_size}
    rows = []
    for name, values in times.items():
        seconds = harness.median(values)
        rows.append(
            {
                "model": model,
                "contender": name,
                "median_s": seconds,
                "iqr_rel": harness.spread(values),
                "samples_s": values,
                "speedup_vs_optax.adam": reference / seconds,
                "last_loss": float(runs[name][1][2]),
            }
        )
    body = [
        [
            r["contender"],
            f"{r['median_s'] * 1e3:.2f}",
            f"{100 * r['iqr_rel']:.0f}%",
            f"{r['speedup_vs_optax.adam']:.2f}x",
            f"{r['last_loss']:.6f}",
        ]
        for r in rows
    ]
    print(harness.table(body, ["contender", "ms/step", "iqr", "speed-up vs optax.adam", "last loss"]), flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, few samples (smoke test)")
    parser.add_argument("--blocks", type=int, default=13)
    parser.add_argument("--d-model", default="32,128", help="comma list: one model per width (d_ff = 4 d_model)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--out", type=Path, default=harness.OUT)
    args = parser.parse_args(argv)
    info = harness.machine()
    print(f"{info['date']}  {info['cpu']}  {info['backend']}: {info['device_kind']}  load {info['load_avg']}")
    configs = [
        models.TransformerConfig(blocks=args.blocks, d_model=int(d), d_ff=4 * int(d), seq=args.seq)
        for d in args.d_model.split(",")
    ]
    if args.quick:
        configs = [models.TransformerConfig(blocks=args.blocks, d_model=16, d_ff=32, heads=2, vocab=32, seq=8)]
        args.batch, args.samples = 2, 3
    rows = [row for cfg in configs for row in measure(cfg, args.batch, args.samples)]
    harness.write_json(args.out / "train_step.json", {"machine": info, "results": rows})
    groups = {}
    for r in rows:
        label = f"d_model {r['model']['d_model']}: {r['model']['leaves']} leaves, {r['model']['params'] / 1e6:.2f}M"
        groups.setdefault(label, {})[r["contender"]] = r["speedup_vs_optax.adam"]
    harness.bar_chart(
        args.out / "train_step.png",
        groups,
        f"Train step (fwd+bwd+Adam) speed-up vs optax.adam - {info['device_kind']}, {info['date'][:10]}",
        "speed-up (higher is faster)",
    )
    print(f"wrote {args.out / 'train_step.json'} and train_step.png")
    return rows


if __name__ == "__main__":
    main()
