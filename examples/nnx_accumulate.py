"""A Flax NNX loop with gradient accumulation and a learning rate changed mid-training.

The optimizer accumulates the gradients of ``ACCUMULATE`` micro-batches and
takes one Adam step on their mean (``adamfx.multi_steps``). Two thirds into
training the learning rate is cut tenfold with ``adamfx.set_hyperparams``: the
value lives in the optimizer state, so the jitted step is not recompiled (the
script counts how often it is traced).

    python examples/nnx_accumulate.py
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import adamfx

EPOCHS, MICRO_BATCH, ACCUMULATE = 20, 16, 4


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(64, 128, rngs=rngs)
        self.out = nnx.Linear(128, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.hidden(x)))


traces = 0


@nnx.jit
def train_step(model, optimizer, x, y):
    global traces
    traces += 1  # runs only while tracing

    def loss_fn(model):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def main():
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)
    micro_steps = EPOCHS * (len(x_train) // MICRO_BATCH)

    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, adamfx.multi_steps(adamfx.adam(3e-3), ACCUMULATE), wrt=nnx.Param)

    rng = np.random.default_rng(0)
    with tqdm(total=micro_steps, desc=f"NNX, {ACCUMULATE} micro-batches per step") as bar:
        for epoch in range(EPOCHS):
            if epoch == 2 * EPOCHS // 3:
                optimizer.opt_state = adamfx.set_hyperparams(optimizer.opt_state, learning_rate=3e-4)
            order = rng.permutation(len(x_train))
            for i in range(len(x_train) // MICRO_BATCH):
                idx = order[i * MICRO_BATCH : (i + 1) * MICRO_BATCH]
                loss = train_step(model, optimizer, x_train[idx], y_train[idx])
                bar.update()
            lr = adamfx.hyperparams(optimizer.opt_state)["learning_rate"]  # applied at the last Adam step
            bar.set_postfix(loss=f"{float(loss):.3f}", lr=f"{float(lr):.1e}")

    adam_steps = int(optimizer.opt_state.gradient_step.get_value())
    accuracy = float(jnp.mean(jnp.argmax(model(x_test), -1) == y_test))
    print(f"{micro_steps} micro-batches, {adam_steps} Adam steps, train step traced {traces} time(s)")
    print(f"test accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
