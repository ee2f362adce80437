"""Data- and model-parallel training on 8 simulated CPU devices, with ZeRO-1 optimizer state.

The params are sharded over a 2-D mesh (``data`` x ``model``) with
``NamedSharding``: kernels split along ``model``, replicated along ``data``. The
batch is split along ``data``. ``adamfx.init_sharded(..., zero_axis="data")``
places the Adam moments like the params *and* splits them along ``data``, so
each device keeps a fraction of the optimizer state (ZeRO stage 1); the jitted
step names the output shardings and XLA inserts the collectives. The script
prints the optimizer-state bytes per device with and without ZeRO.

On real hardware drop the XLA_FLAGS line. On several hosts call
``jax.distributed.initialize()`` first; ``jax.devices()`` then lists every
host's devices and the same code runs on each host.

    python examples/sharded.py
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import adamfx

STEPS, BATCH, HIDDEN = 400, 128, 512
SPECS = {"w1": P(None, "model"), "b1": P("model"), "w2": P("model", None), "b2": P()}


def init_params(key):
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (64, HIDDEN)) * (2 / 64) ** 0.5,
        "b1": jnp.zeros(HIDDEN),
        "w2": jax.random.normal(k2, (HIDDEN, 10)) * (1 / HIDDEN) ** 0.5,
        "b2": jnp.zeros(10),
    }


def logits(params, x):
    return jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def loss_fn(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits(params, x), y).mean()


def main():
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    param_shardings = {name: NamedSharding(mesh, spec) for name, spec in SPECS.items()}
    batch_sharding = NamedSharding(mesh, P("data"))
    params = jax.device_put(init_params(jax.random.key(0)), param_shardings)
    tx = adamfx.adamw(1e-3, weight_decay=1e-4, weight_decay_mask=adamfx.exclude_bias_and_norm)

    device = jax.devices()[0]
    print("optimizer state on one device:")
    for zero_axis in (None, "data"):
        state = adamfx.init_sharded(tx, params, zero_axis=zero_axis)
        print(f"  zero_axis={zero_axis!s:5}  {adamfx.bytes_per_device(state)[device]:>8,} bytes")
    state_shardings = adamfx.state_shardings(tx, params, zero_axis="data")

    @jax.jit
    def train_step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        # keep the params where they were and the state split along data (ZeRO-1)
        params = jax.lax.with_sharding_constraint(params, param_shardings)
        state = jax.lax.with_sharding_constraint(state, state_shardings)
        return params, state, loss

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)
    rng = np.random.default_rng(0)
    with tqdm(range(STEPS), desc="sharded (4 data x 2 model)") as bar:
        for _ in bar:
            idx = rng.choice(len(x_train), BATCH, replace=False)
            xb, yb = jax.device_put((x_train[idx], y_train[idx]), batch_sharding)
            params, state, loss = train_step(params, state, xb, yb)
            bar.set_postfix(loss=f"{float(loss):.3f}")

    first_moment = state[0].mu["w1"]  # adamw's first stage is scale_by_moments
    # tuple(spec): the mesh axes of each array dimension (PartitionSpec's repr differs between jax versions)
    w1_spec, moment_spec = tuple(params["w1"].sharding.spec), tuple(first_moment.sharding.spec)
    print("w1 param sharding:", w1_spec, " its first moment:", moment_spec)
    accuracy = float(jnp.mean(jnp.argmax(logits(params, x_test), -1) == y_test))
    print(f"test accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
