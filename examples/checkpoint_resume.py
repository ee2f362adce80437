"""Checkpoint and resume with orbax: the resumed run is bit-identical to an uninterrupted one.

Trains an MLP on scikit-learn's digits for ``STEPS`` steps without a break,
then again with a checkpoint halfway: everything is dropped, the optimizer is
re-created from its configuration, the state is restored with
``adamfx.restore_state`` (which checks it against the optimizer first) and
training continues. The two final params are compared bit for bit. Last, the
same checkpoint is offered to an optimizer of another configuration, and the
error says what differs.

    python examples/checkpoint_resume.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import serialization
from sklearn.datasets import load_digits
from tqdm import tqdm

import adamfx

STEPS, BATCH = 600, 64
X, Y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32)


def make_optimizer():
    schedule = optax.cosine_decay_schedule(3e-3, STEPS)
    return adamfx.apply_if_finite(
        adamfx.adamw(schedule, weight_decay=1e-3, weight_decay_mask=adamfx.exclude_bias_and_norm)
    )


def init_params():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {
        "w1": jax.random.normal(k1, (64, 128)) * 0.125,
        "b1": jnp.zeros(128),
        "w2": jax.random.normal(k2, (128, 10)) * 0.09,
        "b2": jnp.zeros(10),
    }


def loss_fn(params, x, y):
    logits = jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def batch(step):  # the data order depends only on the step, so a resumed run sees the same batches
    idx = np.random.default_rng(step).choice(len(X), BATCH, replace=False)
    return X[idx], Y[idx]


def train(tx, params, state, start, stop, desc):
    @jax.jit
    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    for i in tqdm(range(start, stop), desc=desc):
        params, state, _loss = step(params, state, *batch(i))
    return params, state


def main():
    tx = make_optimizer()
    params = init_params()
    reference, _ = train(tx, params, tx.init(params), 0, STEPS, "uninterrupted")

    directory = Path(tempfile.mkdtemp()) / "checkpoint"
    params, state = train(tx, params, tx.init(params), 0, STEPS // 2, "first half")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory, {"params": params, "opt_state": state})
    checkpointer.wait_until_finished()
    del tx, params, state  # a new process would start here

    tx = make_optimizer()
    template = init_params()
    raw = checkpointer.restore(directory)  # no target: adamfx checks the raw tree itself
    params = jax.tree.map(jnp.asarray, serialization.from_state_dict(template, raw["params"]))
    state = adamfx.restore_state(tx, template, raw["opt_state"])
    resumed, _ = train(tx, params, state, STEPS // 2, STEPS, "resumed")

    same_bits = jax.tree.map(lambda a, b: np.asarray(a).tobytes() == np.asarray(b).tobytes(), reference, resumed)
    identical = all(jax.tree.leaves(same_bits))
    print(f"resumed run bit-identical to the uninterrupted one: {identical}")

    try:
        adamfx.restore_state(adamfx.amsgrad(1e-3), template, raw["opt_state"])
    except ValueError as error:
        print(f"\nrestoring into amsgrad instead:\n{error}")


if __name__ == "__main__":
    main()
