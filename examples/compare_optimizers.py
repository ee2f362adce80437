"""Which alternative to Adam? The same Flax NNX MLP on scikit-learn digits, trained with every optimizer.

Run:  python examples/compare_optimizers.py   (about a minute on 2 CPU cores)

Each optimizer runs twice from the same initial weights and batch order: at
its conventional defaults (PyTorch's, ``convention="torch"``: the defaults most
recipes quote) and at a tuned learning rate (``TUNED``, picked by
``--sweep``: the best validation loss over a small grid, same epochs). Prints
a table (final train loss, test accuracy, wall time per epoch without the
first, compiling, epoch) and saves every training-loss curve in one PNG,
examples/out/compare_optimizers.png.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from digits_mlp import MLP, evaluate, load_data, train_step
from flax import nnx
from tqdm import tqdm

import adamfx

OUT = pathlib.Path(__file__).parent / "out"
OPTIMIZERS = ("adam", "sgd", "adagrad", "rmsprop", "adadelta", "nadam", "adamax", "radam")
# Best validation loss after 30 epochs over GRID (python examples/compare_optimizers.py --sweep); adadelta's
# best is the top of the grid.
TUNED = {
    "adam": 3e-2,
    "sgd": 1.0,
    "adagrad": 0.1,
    "rmsprop": 1e-2,
    "adadelta": 10.0,
    "nadam": 3e-2,
    "adamax": 3e-2,
    "radam": 0.1,
}
GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)


def train(tx, data, epochs: int, batch_size: int = 64, seed: int = 0, desc: str = ""):
    """Trains a fresh MLP (same init and batches for every optimizer); returns losses, metrics and timing."""
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = data
    model = MLP(nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    rng = np.random.default_rng(seed)
    curve, seconds = [], []
    for _ in tqdm(range(epochs), desc=desc, leave=False):
        start = time.perf_counter()
        order = rng.permutation(len(x_train))
        losses = [
            train_step(model, optimizer, x_train[idx], y_train[idx])
            for idx in np.array_split(order, len(order) // batch_size)
        ]
        curve.append(float(np.mean(jax.device_get(losses))))
        seconds.append(time.perf_counter() - start)
    val_loss, _ = evaluate(model, x_val, y_val)
    _, test_acc = evaluate(model, x_test, y_test)
    return {
        "curve": curve,
        "val_loss": float(val_loss),
        "test_acc": float(test_acc),
        "ms_per_epoch": 1e3 * float(np.median(seconds[1:])),
    }


def settings():
    """(optimizer, setting, learning rate or None for the default, transform) for every run."""
    for name in OPTIMIZERS:
        factory = getattr(adamfx, name)
        yield name, "defaults", None, factory(convention="torch")
        yield name, "tuned", TUNED[name], factory(TUNED[name], convention="torch")


def main(epochs: int = 30, seed: int = 0) -> dict:
    data = load_data(seed)
    results = {}
    for name, setting, lr, tx in tqdm(list(settings()), desc="optimizers"):
        results[name, setting] = {"lr": lr, **train(tx, data, epochs, seed=seed, desc=f"{name} ({setting})")}
    print_table(results)
    save_plot(results)
    return results


def print_table(results: dict) -> None:
    print(f"\n{'optimizer':<10} {'setting':<9} {'lr':>8} {'train loss':>11} {'test acc':>9} {'ms/epoch':>9}")
    for (name, setting), r in results.items():
        lr = "default" if r["lr"] is None else f"{r['lr']:g}"
        print(
            f"{name:<10} {setting:<9} {lr:>8} {r['curve'][-1]:>11.4f} {r['test_acc']:>9.2%} {r['ms_per_epoch']:>9.1f}"
        )


def save_plot(results: dict) -> None:
    OUT.mkdir(exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, setting in zip(axes, ("defaults", "tuned"), strict=True):
        for (name, s), r in results.items():
            if s == setting:
                ax.plot(range(1, len(r["curve"]) + 1), r["curve"], label=name)
        ax.set(xlabel="epoch", yscale="log", title=f"{setting} (convention='torch')")
    axes[0].set_ylabel("training cross-entropy")
    axes[1].legend(ncol=2, fontsize=8)
    fig.suptitle("Flax NNX MLP on digits: Adam and its alternatives")
    fig.tight_layout()
    fig.savefig(OUT / "compare_optimizers.png", dpi=120)
    print(f"saved {OUT / 'compare_optimizers.png'}")


def sweep(epochs: int = 30, seed: int = 0) -> dict:
    """The learning rate of GRID with the best validation loss, per optimizer (how TUNED was chosen)."""
    data = load_data(seed)
    best = {}
    for name in OPTIMIZERS:
        losses = {
            lr: train(getattr(adamfx, name)(lr, convention="torch"), data, epochs, seed=seed)["val_loss"]
            for lr in tqdm(GRID, desc=name)
        }
        best[name] = min(losses, key=lambda lr: np.nan_to_num(losses[lr], nan=np.inf))
        print(name, {lr: round(loss, 4) for lr, loss in losses.items()}, "->", best[name])
    return best


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--sweep", action="store_true", help="re-pick TUNED on the validation split")
    args = parser.parse_args()
    sweep(args.epochs) if args.sweep else main(args.epochs)
