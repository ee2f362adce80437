"""Flagship example: a Flax NNX MLP trained on scikit-learn's bundled digits with adamfx.adam.

Run:  python examples/digits_mlp.py   (about 20 s on 2 CPU cores)

Prints the test accuracy and saves the training / validation loss curves to
examples/out/digits_mlp_loss.png.
"""

from __future__ import annotations

import argparse
import pathlib

import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import adamfx

OUT = pathlib.Path(__file__).parent / "out"


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, hidden: int = 128):
        self.hidden = nnx.Linear(64, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.hidden(x)))


def load_data(seed: int = 0):
    """Digits (8x8 images, 10 classes) split 60/20/20 into train/validation/test, scaled to [0, 1]."""
    digits = load_digits()
    x = digits.data.astype(np.float32) / 16.0
    y = digits.target.astype(np.int32)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, random_state=seed, stratify=y)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, random_state=seed, stratify=y_rest)
    return (x_train, y_train), (x_val, y_val), (x_test, y_test)


def loss_fn(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@nnx.jit
def train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def evaluate(model, x, y):
    logits = model(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == y)


def main(epochs: int = 40, batch_size: int = 64, seed: int = 0) -> float:
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = load_data(seed)
    model = MLP(nnx.Rngs(seed))
    # Keras-style hyperparameters map one to one: learning_rate, beta_1 -> b1, beta_2 -> b2, epsilon -> eps.
    optimizer = nnx.Optimizer(model, adamfx.adam(learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8), wrt=nnx.Param)
    rng = np.random.default_rng(seed)
    history = {"train": [], "validation": []}
    for _ in (bar := tqdm(range(epochs), desc="training")):
        order = rng.permutation(len(x_train))
        losses = [
            train_step(model, optimizer, x_train[idx], y_train[idx])
            for idx in np.array_split(order, len(order) // batch_size)
        ]
        val_loss, val_acc = evaluate(model, x_val, y_val)
        history["train"].append(float(np.mean(losses)))
        history["validation"].append(float(val_loss))
        bar.set_postfix(loss=f"{history['train'][-1]:.3f}", val_acc=f"{float(val_acc):.3f}")
    _, test_acc = evaluate(model, x_test, y_test)
    print(f"test accuracy: {float(test_acc):.2%}")
    save_plot(history)
    return float(test_acc)


def save_plot(history: dict[str, list[float]]) -> None:
    OUT.mkdir(exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in history.items():
        ax.plot(range(1, len(values) + 1), values, label=name)
    ax.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="Flax NNX MLP on digits, adamfx.adam")
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "digits_mlp_loss.png", dpi=120)
    print(f"saved {OUT / 'digits_mlp_loss.png'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    main(epochs=args.epochs)
