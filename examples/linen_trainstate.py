"""A Flax linen ``TrainState`` loop with adamfx: AdamW, a schedule, no decay on biases, an EMA of the weights.

Trains an MLP on scikit-learn's handwritten digits (8x8 images, 10 classes) and
reports the test accuracy of the weights and of their moving average. The
learning rate shown in the progress bar is the one the last step applied
(``adamfx.hyperparams``), read from the optimizer state.

    python examples/linen_trainstate.py
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import adamfx

EPOCHS, BATCH = 30, 64


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(128)(x))
        x = nn.LayerNorm()(x)
        return nn.Dense(10)(x)


def main():
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)
    steps = EPOCHS * (len(x_train) // BATCH)

    model = MLP()
    params = model.init(jax.random.key(0), x_train[:1])["params"]
    schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, warmup_steps=steps // 10, decay_steps=steps)
    tx = adamfx.with_ema(
        adamfx.adamw(schedule, weight_decay=1e-2, weight_decay_mask=adamfx.exclude_bias_and_norm),
        ema_momentum=0.99,
    )
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    @jax.jit
    def train_step(state, xb, yb):
        def loss_fn(params):
            logits = state.apply_fn({"params": params}, xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    @jax.jit
    def accuracy(params, xs, ys):
        return jnp.mean(jnp.argmax(model.apply({"params": params}, xs), -1) == ys)

    rng = np.random.default_rng(0)
    with tqdm(total=steps, desc="linen TrainState") as bar:
        for _ in range(EPOCHS):
            order = rng.permutation(len(x_train))
            for i in range(len(x_train) // BATCH):
                idx = order[i * BATCH : (i + 1) * BATCH]
                state, loss = train_step(state, x_train[idx], y_train[idx])
                bar.update()
            lr = adamfx.hyperparams(state.opt_state)["learning_rate"]
            bar.set_postfix(loss=f"{float(loss):.3f}", lr=f"{float(lr):.2e}")

    ema = adamfx.ema_params(state.opt_state)
    print(
        f"test accuracy: weights {float(accuracy(state.params, x_test, y_test)):.3f}, "
        f"EMA of the weights {float(accuracy(ema, x_test, y_test)):.3f}"
    )


if __name__ == "__main__":
    main()
