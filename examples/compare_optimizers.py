"""Which alternative to Adam? The same Flax NNX MLP on scikit-learn digits, trained with every optimizer.

Run:  python examples/compare_optimizers.py   (about a minute on 2 CPU cores)

Each optimizer runs twice from the same initial weights and batch order: at
its conventional defaults (PyTorch's, ``convention="torch"``: the defaults most
recipes quote; lamb, which PyTorch lacks, in optax's) and at a tuned learning
rate (``TUNED``, picked by ``--sweep``: the best validation loss over a small
grid, same epochs, the grid's runs of an optimizer trained at once as one
vmapped program over :func:`adamfx.sweep`). Schedule-free optimizers are
evaluated at their averaged iterate (:func:`adamfx.schedule_free_eval_params`). Prints
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
import optax
from digits_mlp import MLP, evaluate, load_data, train_step
from flax import nnx
from tqdm import tqdm

import adamfx

OUT = pathlib.Path(__file__).parent / "out"
# Every optimizer of adamfx.OPTIMIZERS but the variants of another one's update rule (its decoupled weight decay,
# AMSGrad's max): this example compares update rules, one run per rule (examples/sensitivity.py runs them all).
VARIANTS = {"adamw", "amsgrad", "nadamw", "adamaxw"}
OPTIMIZERS = tuple(name for name in adamfx.OPTIMIZERS if name not in VARIANTS)
CONVENTION_OF = {"lamb": "optax"}  # PyTorch has no LAMB; every other optimizer runs in convention="torch"
# Best validation loss after 30 epochs over GRID (python examples/compare_optimizers.py --sweep; the vmapped sweep
# picks the rates the earlier sequential one did for the first eight); adadelta's best is the top of the grid;
# adafactor (torch: relative step, rho_t = min(lr, 1/sqrt(t))) is the same from 1.0 up.
TUNED = {
    "adam": 3e-2,
    "sgd": 1.0,
    "adagrad": 0.1,
    "rmsprop": 1e-2,
    "adadelta": 10.0,
    "nadam": 3e-2,
    "adamax": 3e-2,
    "radam": 0.1,
    "lion": 1e-3,
    "lamb": 3e-3,
    "adabelief": 3e-2,
    "adopt": 1e-2,
    "ademamix": 1e-2,
    "prodigy": 1.0,
    "schedule_free_adamw": 1e-2,
    "schedule_free_sgd": 3.0,
    "muon": 1e-2,
    "adafactor": 0.3,
}
GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)


def build(name: str, learning_rate: float | None = None):
    """The optimizer at its defaults, or with ``learning_rate``."""
    kwargs = {} if learning_rate is None else {"learning_rate": learning_rate}
    return getattr(adamfx, name)(**kwargs, convention=CONVENTION_OF.get(name, "torch"))


def evaluation_params(name: str):
    """``(state, params) -> params to evaluate``: schedule-free optimizers evaluate their averaged iterate x."""
    if name.startswith("schedule_free"):
        return adamfx.schedule_free_eval_params
    return lambda state, params: params


def train(name: str, tx, data, epochs: int, batch_size: int = 64, seed: int = 0, desc: str = ""):
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
    params = evaluation_params(name)(optimizer.opt_state, nnx.state(model, nnx.Param))
    evaluated = nnx.merge(nnx.graphdef(model), params)
    val_loss, _ = evaluate(evaluated, x_val, y_val)
    _, test_acc = evaluate(evaluated, x_test, y_test)
    return {
        "curve": curve,
        "val_loss": float(val_loss),
        "test_acc": float(test_acc),
        "ms_per_epoch": 1e3 * float(np.median(seconds[1:])),
    }


def settings():
    """(optimizer, setting, learning rate or None for the default, transform) for every run."""
    for name in OPTIMIZERS:
        yield name, "defaults", None, build(name)
        yield name, "tuned", TUNED[name], build(name, TUNED[name])


def main(epochs: int = 30, seed: int = 0) -> dict:
    data = load_data(seed)
    results = {}
    for name, setting, lr, tx in tqdm(list(settings()), desc="optimizers"):
        results[name, setting] = {"lr": lr, **train(name, tx, data, epochs, seed=seed, desc=f"{name} ({setting})")}
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


def sweep(epochs: int = 30, seed: int = 0, names=None, batch_size: int = 64) -> dict:
    """The learning rate of GRID with the best validation loss, per optimizer (how TUNED was chosen).

    The runs of one optimizer over GRID train at once: member k of a ``jax.vmap`` of the train step over
    ``adamfx.sweep(state, learning_rate=GRID)`` is :func:`train` at ``GRID[k]`` (same initial weights, same batches;
    tests/test_sweep.py checks member k against the unbatched run), one compiled step per batch shape.
    """
    (x_train, y_train), (x_val, y_val), _ = load_data(seed)
    graphdef, params = nnx.split(MLP(nnx.Rngs(seed)), nnx.Param)
    params = nnx.to_pure_dict(params)

    def loss(params, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(nnx.merge(graphdef, params)(x), y).mean()

    best = {}
    for name in names or OPTIMIZERS:
        tx = build(name, GRID[0])

        @jax.jit
        def step(members, states, x, y, tx=tx):
            def one(params, state):
                updates, state = tx.update(jax.grad(loss)(params, x, y), state, params)
                return optax.apply_updates(params, updates), state

            return jax.vmap(one)(members, states)

        members, states = adamfx.sweep_params(params, len(GRID)), adamfx.sweep(tx.init(params), learning_rate=GRID)
        rng = np.random.default_rng(seed)
        for _ in tqdm(range(epochs), desc=f"{name} ({len(GRID)} rates)", leave=False):
            order = rng.permutation(len(x_train))
            for idx in np.array_split(order, len(order) // batch_size):
                members, states = step(members, states, x_train[idx], y_train[idx])
        evaluated = jax.vmap(evaluation_params(name))(states, members)
        losses = np.nan_to_num(np.asarray(jax.vmap(loss, (0, None, None))(evaluated, x_val, y_val)), nan=np.inf)
        best[name] = GRID[int(np.argmin(losses))]
        print(name, {lr: round(float(v), 4) for lr, v in zip(GRID, losses, strict=True)}, "->", best[name])
    return best


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--sweep", action="store_true", help="re-pick TUNED on the validation split")
    parser.add_argument("--optimizers", default=None, help="comma-separated names for --sweep (default: all)")
    args = parser.parse_args()
    sweep(args.epochs, names=args.optimizers and args.optimizers.split(",")) if args.sweep else main(args.epochs)
