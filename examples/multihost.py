"""Multi-host data- and model-parallel training with ZeRO-1 state, `fused` Adam and an orbax checkpoint.

Every process runs this same script. ``jax.distributed.initialize`` joins them into one JAX program;
``jax.devices()`` then lists the devices of all hosts, and the mesh ``data x model`` puts ``model``
within a host (its fast links) and ``data`` across hosts. The params are global arrays sharded on
the mesh, each host feeds its own slice of the batch, the optimizer state is split along ``data``
as well (ZeRO-1: each host keeps 1 / hosts of it), and the checkpoint is written and read by all
processes together, each its own shards.

On one machine (2 processes x 4 simulated CPU devices, gloo collectives):

    python examples/multihost.py

On real hosts, run on each (the same command, its own ``--process-id``; ``--checkpoint`` must be a
directory every host sees, such as a shared file system or a gs:// bucket):

    python examples/multihost.py --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 0 \\
        --checkpoint /shared/ckpt
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

STEPS, BATCH, WIDTH, HIDDEN = 200, 256, 32, 256


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coordinator", help="HOST:PORT of process 0; omit to launch 2 local processes")
    parser.add_argument("--num-processes", type=int, default=2)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--checkpoint", help="a directory all processes see (default: a temporary one)")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--timeout", type=float, default=600, help="seconds before local processes are killed")
    return parser.parse_args(argv)


def launch_locally(args) -> int:
    """Starts 2 processes of this script on 127.0.0.1, 4 simulated CPU devices each; returns the exit code."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    checkpoint = args.checkpoint or tempfile.mkdtemp(prefix="adamfx-multihost-")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, __file__, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    command += ["--checkpoint", checkpoint, "--steps", str(args.steps)]
    procs = [
        subprocess.Popen([*command, "--process-id", str(i)], env=env, stdout=None if i == 0 else subprocess.DEVNULL)
        for i in range(2)
    ]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so that `finally` stops the workers
    try:
        codes = [proc.wait(timeout=args.timeout) for proc in procs]
    except subprocess.TimeoutExpired:
        codes = [1]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()  # SIGKILL: a worker blocked in a collective ignores SIGTERM
    return 0 if codes == [0, 0] else 1


def main(args) -> float:
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # across processes on CPU (GPUs, TPUs: unused)
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id, initialization_timeout=120)

    import jax.numpy as jnp
    import numpy as np
    import optax
    import orbax.checkpoint as ocp
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    import adamfx

    say = print if jax.process_index() == 0 else (lambda *a, **k: None)
    mesh = jax.make_mesh((jax.process_count(), jax.local_device_count()), ("data", "model"), (AxisType.Auto,) * 2)
    specs = {"w1": P(None, "model"), "b1": P("model"), "w2": P("model", None), "b2": P()}
    param_shardings = {name: NamedSharding(mesh, spec) for name, spec in specs.items()}
    batch_sharding = NamedSharding(mesh, P("data"))

    # The same seed on every host: each process materialises only its own shards of the global params.
    def init_params():
        k1, k2 = jax.random.split(jax.random.key(0))
        return {
            "w1": jax.random.normal(k1, (WIDTH, HIDDEN)) * WIDTH**-0.5,
            "b1": jnp.zeros(HIDDEN),
            "w2": jax.random.normal(k2, (HIDDEN, 1)) * HIDDEN**-0.5,
            "b2": jnp.zeros(1),
        }

    params = jax.jit(init_params, out_shardings=param_shardings)()
    tx = adamfx.fused(adamfx.adamw(3e-3, weight_decay=1e-4, weight_decay_mask=adamfx.exclude_bias_and_norm))
    state_shardings = adamfx.state_shardings(tx, params, zero_axis="data")
    state = adamfx.init_sharded(tx, params, zero_axis="data")
    device = jax.local_devices()[0]
    say(f"{jax.process_count()} processes, mesh {dict(mesh.shape)}")
    say(f"optimizer state on one device: {adamfx.bytes_per_device(state)[device]:,} bytes (ZeRO-1, fused)")

    def loss_fn(params, x, y):
        hidden = jax.nn.gelu(x @ params["w1"] + params["b1"])
        return jnp.mean((hidden @ params["w2"] + params["b2"] - y) ** 2)

    @jax.jit
    def train_step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        params = jax.lax.with_sharding_constraint(optax.apply_updates(params, updates), param_shardings)
        return params, jax.lax.with_sharding_constraint(state, state_shardings), loss

    def local_batch(step):
        """This host's slice of the global batch (a real loader reads only its own files)."""
        rng = np.random.default_rng([step, jax.process_index()])
        x = rng.standard_normal((BATCH // jax.process_count(), WIDTH)).astype(np.float32)
        y = np.tanh(x[:, :4].sum(axis=1, keepdims=True) / 2).astype(np.float32)
        return (jax.make_array_from_process_local_data(batch_sharding, a) for a in (x, y))

    checkpointer = ocp.StandardCheckpointer()
    path = Path(args.checkpoint or tempfile.mkdtemp()).absolute() / "half"
    loss = jnp.nan
    for step in range(args.steps):
        if step == args.steps // 2:
            checkpointer.save(path, {"params": params, "opt_state": state}, force=True)
            checkpointer.wait_until_finished()
            # As after a restart: check the checkpoint against the optimizer, restore into the shardings.
            adamfx.check_compatible(tx, params, checkpointer.metadata(path).item_metadata.tree["opt_state"])
            abstract = lambda tree, shardings: jax.tree.map(
                lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
            )
            target = {
                "params": abstract(params, param_shardings),
                "opt_state": abstract(jax.eval_shape(tx.init, params), state_shardings),
            }
            restored = checkpointer.restore(path, target)
            params, state = restored["params"], restored["opt_state"]
            say(f"step {step}: saved and restored {path}")
        params, state, loss = train_step(params, state, *local_batch(step))
        if step % 50 == 0 or step == args.steps - 1:
            say(f"step {step:4d}  loss {float(loss):.4f}")
    checkpointer.close()
    jax.distributed.shutdown()
    return float(loss)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.coordinator is None:
        sys.exit(launch_locally(arguments))
    main(arguments)
