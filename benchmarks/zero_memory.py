"""Optimizer-state bytes per device: placed like the params vs ZeRO-1, on 8 simulated CPU devices.

A transformer-like parameter tree (embedding, attention and MLP kernels sharded
along ``model``, norms and biases replicated) on meshes ``data x model`` with
data = 1, 2, 4, 8. For each mesh it measures, from the arrays' addressable
shards on device 0, the optimizer-state bytes of

- ``optax.adam`` initialised on the sharded params (its zeros follow the params),
- ``adamfx.adam`` via ``init_sharded`` (placed like the params),
- ``adamfx.adam`` via ``init_sharded(zero_axis="data")`` (ZeRO-1),
- ``adamfx.fused(adamfx.adam)`` both ways: its big leaves keep their own buffers
  (placed like their params), its packed buffer of norms and biases is split
  across the mesh; the target is <= 1.05x the unfused state per device,

prints a table with the ratios, and writes ``benchmarks/out/zero_memory.{json,png}`` (``--out`` elsewhere).

    python benchmarks/zero_memory.py            # seconds to a minute
    python benchmarks/zero_memory.py --quick    # a one-layer, narrow tree on meshes 1x8 and 8x1
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import argparse
import json
import platform
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import adamfx

VOCAB, WIDTH, LAYERS = 4096, 256, 4
OUT = Path(__file__).parent / "out"


def param_specs():
    specs = {"embed": ((VOCAB, WIDTH), P("model", None)), "final_norm": ((WIDTH,), P())}
    for i in range(LAYERS):
        specs[f"layer{i}"] = {
            "qkv": ((WIDTH, 3 * WIDTH), P(None, "model")),
            "proj": ((WIDTH, WIDTH), P("model", None)),
            "up": ((WIDTH, 4 * WIDTH), P(None, "model")),
            "down": ((4 * WIDTH, WIDTH), P("model", None)),
            "norm": ((WIDTH,), P()),
            "bias": ((4 * WIDTH,), P("model")),
        }
    return specs


def is_spec(x):
    return isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], P)


def sharded_params(mesh):
    return jax.tree.map(
        lambda s: jax.device_put(jnp.zeros(s[0], jnp.float32), NamedSharding(mesh, s[1])),
        param_specs(),
        is_leaf=is_spec,
    )


def measure(data):
    mesh = jax.make_mesh((data, 8 // data), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    params = sharded_params(mesh)
    device = jax.devices()[0]
    on_device = lambda tree: adamfx.bytes_per_device(tree)[device]
    return {
        "mesh": f"{data}x{8 // data}",
        "params": on_device(params),
        "optax.adam": on_device(optax.adam(1e-3).init(params)),
        "adamfx.adam": on_device(adamfx.init_sharded(adamfx.adam(1e-3), params)),
        "adamfx.adam ZeRO-1": on_device(adamfx.init_sharded(adamfx.adam(1e-3), params, zero_axis="data")),
        "fused": on_device(adamfx.init_sharded(adamfx.fused(adamfx.adam(1e-3)), params)),
        "fused ZeRO-1": on_device(adamfx.init_sharded(adamfx.fused(adamfx.adam(1e-3)), params, zero_axis="data")),
    }


def main(argv=None):
    global VOCAB, WIDTH, LAYERS, OUT
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one narrow layer, meshes 1x8 and 8x1 (smoke test)")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the JSON and PNG")
    args = parser.parse_args(argv)
    OUT = args.out
    if args.quick:
        VOCAB, WIDTH, LAYERS = 512, 64, 1
    rows = [measure(data) for data in ((1, 8) if args.quick else (1, 2, 4, 8))]
    print(f"optimizer-state bytes on device 0 ({platform.processor() or platform.machine()}, 8 simulated devices)")
    header = (
        f"{'mesh data x model':>18} {'params':>10} {'optax.adam':>11} {'adamfx':>10} {'ZeRO-1':>10} {'optax/ZeRO':>11}"
        f" {'fused':>10} {'fused/adamfx':>13} {'fused ZeRO-1':>13} {'fused/ZeRO-1':>13}"
    )
    print(header)
    for r in rows:
        r["fused/adamfx"] = r["fused"] / r["adamfx.adam"]
        r["fused ZeRO-1/ZeRO-1"] = r["fused ZeRO-1"] / r["adamfx.adam ZeRO-1"]
        print(
            f"{r['mesh']:>18} {r['params']:>10,} {r['optax.adam']:>11,} {r['adamfx.adam']:>10,} "
            f"{r['adamfx.adam ZeRO-1']:>10,} {r['optax.adam'] / r['adamfx.adam ZeRO-1']:>10.2f}x"
            f" {r['fused']:>10,} {r['fused/adamfx']:>12.4f}x"
            f" {r['fused ZeRO-1']:>13,} {r['fused ZeRO-1/ZeRO-1']:>12.4f}x"
        )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "zero_memory.json").write_text(json.dumps({"jax": jax.__version__, "rows": rows}, indent=2))
    plt.switch_backend("Agg")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = range(len(rows))
    keys = ("optax.adam", "adamfx.adam", "adamfx.adam ZeRO-1", "fused", "fused ZeRO-1")
    for offset, key in zip((-0.32, -0.16, 0, 0.16, 0.32), keys, strict=True):
        ax.bar([i + offset for i in x], [r[key] / 2**20 for r in rows], width=0.16, label=key)
    ax.set_xticks(list(x), [r["mesh"] for r in rows])
    ax.set_xlabel("mesh (data x model)")
    ax.set_ylabel("optimizer state per device (MiB)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "zero_memory.png", dpi=120)


if __name__ == "__main__":
    main()
