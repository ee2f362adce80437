"""How sensitive is each optimizer to its learning rate? 16 rates x 3 seeds, one vmapped program per optimizer.

Run:  python examples/sensitivity.py   (~2 min of CPU time; 3 min 11 s wall on 2 shared, loaded cores)

The flagship's MLP (``digits_mlp.py``) on scikit-learn's digits, trained with
every adamfx optimizer (``convention="torch"``; lamb, which PyTorch lacks, in
``"optax"``) at 16 log-spaced learning rates and 3 initialisation seeds: for
each optimizer the 48 models train *at once*, as one ``jax.vmap`` of the train
step over an :func:`adamfx.sweep` of the optimizer state, in one jitted
program (a ``lax.scan`` over the epochs of a ``lax.scan`` over the batches,
compiled once). Muon orthogonalizes the two weight matrices and hands the
biases to AdamW (its own split by dimension); the schedule-free optimizers are
validated at their averaged iterate (:func:`adamfx.schedule_free_eval_params`).
Prints a table (best learning rate, best final validation loss, how many
decades of learning rate stay within 10% of it, and the seconds spent compiling
and training) and saves examples/out/sensitivity.png: final validation loss and
accuracy against the learning rate, one curve per optimizer (mean over the
seeds) with the seed spread (min to max) shaded.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import optax
from digits_mlp import MLP, load_data
from flax import nnx
from tqdm import tqdm

import adamfx

OUT = pathlib.Path(__file__).parent / "out"
CONVENTION = "torch"
# The optimizers PyTorch has no version of run in optax's convention (the table marks them).
CONVENTION_OF = {"lamb": "optax"}
# One line per optimizer of adamfx.OPTIMIZERS (all of them; muon orthogonalizes the two weight matrices and hands the
# biases to AdamW, its own split by dimension): how it is built from a learning rate.
OPTIMIZERS = {
    name: (lambda lr, name=name: getattr(adamfx, name)(lr, convention=CONVENTION_OF.get(name, CONVENTION)))
    for name in adamfx.OPTIMIZERS
}
LR_RANGE = (10**-3.5, 10**1.5)  # 16 rates a third of a decade apart
WITHIN = 0.10  # the "good" learning rates: final validation loss within 10% of the best


def init_params(key: jax.Array) -> dict:
    """The MLP's parameters (a plain dict) from one PRNG key."""
    return nnx.to_pure_dict(nnx.split(MLP(nnx.Rngs(params=key)), nnx.Param)[1])


GRAPHDEF = nnx.graphdef(MLP(nnx.Rngs(0)))


def loss_and_accuracy(params: dict, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits = nnx.merge(GRAPHDEF, params)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), jnp.mean(jnp.argmax(logits, -1) == y)


def train_step(tx):
    """One member's step ``(params, state, x, y) -> (params, state, loss)``; vmap it for a sweep."""

    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(lambda p: loss_and_accuracy(p, x, y)[0])(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    return step


def batch_indices(seeds: np.ndarray, epoch: int, n: int, batch_size: int) -> np.ndarray:
    """``(steps, members, batch_size)`` indices: each member's seed shuffles its own epoch."""
    orders = {s: np.random.default_rng([s, epoch]).permutation(n) for s in set(seeds.tolist())}
    steps = n // batch_size
    return np.stack([orders[s][: steps * batch_size].reshape(steps, batch_size) for s in seeds], axis=1)


def evaluation_params(name: str):
    """``(state, params) -> params to validate``: schedule-free optimizers validate their averaged iterate x."""
    if name.startswith("schedule_free"):
        return adamfx.schedule_free_eval_params
    return lambda state, params: params


def member_params(lrs: np.ndarray, seeds: np.ndarray) -> dict:
    """The initial params of the ``len(lrs) x len(seeds)`` members (rate-major: member ``i len(seeds) + j`` has rate
    i and seed j), the same for every optimizer, so they are made once."""
    keys = jnp.stack([jax.random.key(int(s)) for s in np.tile(seeds, len(lrs))])
    return adamfx.sweep_params(init_params, keys=keys)


def sweep_optimizer(name, lrs, seeds, params, data, epochs: int, batch_size: int) -> dict:
    """Trains ``len(lrs) x len(seeds)`` MLPs at once from ``params`` (:func:`member_params`); final validation loss and
    accuracy as (lrs, seeds) arrays.

    One jitted program per optimizer, from the states' initialisation to the validation: a ``lax.scan`` over the
    epochs of a ``lax.scan`` over the mini-batches of the vmapped train step, compiled ahead of time (``compile_s``)
    and then run once (``run_s``).
    """
    (x_train, y_train), (x_val, y_val), _ = data
    member_lr, member_seed = np.repeat(lrs, len(seeds)), np.tile(seeds, len(lrs))
    tx = OPTIMIZERS[name](float(lrs[0]))
    step = jax.vmap(train_step(tx))
    validate = jax.vmap(lambda state, params: loss_and_accuracy(evaluation_params(name)(state, params), x_val, y_val))

    def train(params, x, y, idx):
        """Initialises the members' states (``member_lr`` is a NumPy constant: sweep checks its range), trains them."""
        states = adamfx.sweep(jax.vmap(tx.init)(params), batched=True, learning_rate=member_lr)

        def batch(carry, i):
            params, states, loss = step(*carry, x[i], y[i])
            return (params, states), loss

        def epoch(carry, idx):
            carry, losses = jax.lax.scan(batch, carry, idx)
            return carry, losses.mean(0)

        (params, states), train_loss = jax.lax.scan(epoch, (params, states), idx)
        return validate(states, params), train_loss

    idx = np.stack([batch_indices(member_seed, e, len(x_train), batch_size) for e in range(epochs)])
    start = time.perf_counter()
    compiled = jax.jit(train).lower(params, x_train, y_train, idx).compile()
    compiled_at = time.perf_counter()
    (val_loss, val_acc), train_loss = jax.block_until_ready(compiled(params, x_train, y_train, idx))
    shape = (len(lrs), len(seeds))
    return {
        "val_loss": np.asarray(val_loss).reshape(shape),
        "val_acc": np.asarray(val_acc).reshape(shape),
        "train_loss": np.asarray(train_loss),  # (epochs, members)
        "compile_s": compiled_at - start,
        "run_s": time.perf_counter() - compiled_at,
    }


def summary(lrs: np.ndarray, val_loss: np.ndarray) -> dict:
    """Best learning rate (by the mean over seeds), its loss (mean and std over seeds), and ``decades``: the width,
    in decades, of the learning-rate range around it whose mean loss stays within WITHIN of the best (linear in
    log10(lr) between grid points; a diverged neighbour ends the range at the last good point)."""
    mean = np.nan_to_num(val_loss.mean(1), nan=np.inf)
    best = int(np.argmin(mean))
    limit = (1 + WITHIN) * mean[best]
    log_lr = np.log10(lrs)

    def edge(direction: int) -> float:
        i = best
        while 0 <= i + direction < len(lrs) and mean[i + direction] <= limit:
            i += direction
        j = i + direction
        if not 0 <= j < len(lrs) or not np.isfinite(mean[j]):
            return float(log_lr[i])
        return float(log_lr[i] + (log_lr[j] - log_lr[i]) * (limit - mean[i]) / (mean[j] - mean[i]))

    return {
        "best_lr": float(lrs[best]),
        "best_loss": float(mean[best]),
        "best_loss_std": float(np.std(val_loss[best])),
        "decades": edge(+1) - edge(-1),
    }


def main(
    optimizers=tuple(OPTIMIZERS),
    n_lrs: int = 16,
    lr_range: tuple[float, float] = LR_RANGE,
    n_seeds: int = 3,
    epochs: int = 20,
    batch_size: int = 32,
) -> dict:
    data = load_data(0)
    lrs = np.logspace(np.log10(lr_range[0]), np.log10(lr_range[1]), n_lrs)
    seeds = np.arange(n_seeds)
    results = {}
    start = time.perf_counter()
    params = member_params(lrs, seeds)
    with tqdm(optimizers, desc="sweeps") as bar:
        for name in bar:
            bar.set_description(f"{name} ({n_lrs * n_seeds} models)")
            results[name] = sweep_optimizer(name, lrs, seeds, params, data, epochs, batch_size)
            results[name].update(summary(lrs, results[name]["val_loss"]))
            bar.set_postfix(best_val_loss=f"{results[name]['best_loss']:.3f}")
    total = time.perf_counter() - start
    print_table(results, lrs)
    compile_s, run_s = (sum(r[key] for r in results.values()) for key in ("compile_s", "run_s"))
    print(
        f"{len(optimizers)} optimizers x {n_lrs} learning rates x {n_seeds} seeds, {epochs} epochs: {total:.0f} s "
        f"(compiling {compile_s:.0f} s, training {run_s:.0f} s)"
    )
    save(results, lrs)
    return results


def print_table(results: dict, lrs: np.ndarray) -> None:
    step = float(np.log10(lrs[1] / lrs[0])) if len(lrs) > 1 else 0.0
    head = f"{'optimizer':<20} {'best lr':>9} {'val loss (seeds)':>17} {'val acc':>8} {'decades within 10%':>19}"
    print(f"\n{head} {'compile s':>9} {'train s':>8}")
    for name, r in results.items():
        best = int(np.argmin(np.abs(lrs - r["best_lr"])))
        loss = f"{r['best_loss']:.4f} +- {r['best_loss_std']:.4f}"
        label = name + (f" ({CONVENTION_OF[name]})" if name in CONVENTION_OF else "")
        print(
            f"{label:<20} {r['best_lr']:>9.3g} {loss:>17} {r['val_acc'][best].mean():>8.2%} {r['decades']:>19.2f} "
            f"{r['compile_s']:>9.1f} {r['run_s']:>8.1f}"
        )
    print(f"(grid: {len(lrs)} rates, {step:.2f} decades apart; seed mean; convention {CONVENTION!r} or as marked)")


def save(results: dict, lrs: np.ndarray) -> None:
    OUT.mkdir(exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharex=True)
    chance = float(np.log(10))  # the loss of a uniform guess; diverged runs are drawn there
    for i, (name, r) in enumerate(results.items()):
        color = plt.cm.tab20(i % 20 / 19)  # 20 colours; the optimizers after the 11th are dashed
        style = {"color": color, "label": name, "linestyle": "-" if i < 11 else "--"}
        for ax, key, clip in ((axes[0], "val_loss", chance), (axes[1], "val_acc", None)):
            values = np.nan_to_num(r[key], nan=clip if clip else 0.0)
            values = np.minimum(values, clip) if clip else values
            ax.plot(lrs, values.mean(1), **style)
            ax.fill_between(lrs, values.min(1), values.max(1), color=style["color"], alpha=0.15, linewidth=0)
    axes[0].set(xscale="log", yscale="log", xlabel="learning rate", ylabel="final validation cross-entropy")
    axes[1].set(xscale="log", xlabel="learning rate", ylabel="final validation accuracy", ylim=(0, 1))
    axes[1].legend(ncol=2, fontsize=8)
    fig.suptitle("Learning-rate sensitivity: Flax MLP on digits, seeds shaded (convention='torch'; lamb: 'optax')")
    fig.tight_layout()
    fig.savefig(OUT / "sensitivity.png", dpi=120)
    plain = {
        name: {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()} for name, r in results.items()
    }
    (OUT / "sensitivity.json").write_text(json.dumps({"lrs": lrs.tolist(), "results": plain}, indent=1))
    print(f"saved {OUT / 'sensitivity.png'} and {OUT / 'sensitivity.json'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS), help="comma-separated names")
    parser.add_argument("--lrs", type=int, default=16, help="number of log-spaced learning rates")
    parser.add_argument("--lr-range", type=float, nargs=2, default=LR_RANGE, metavar=("MIN", "MAX"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    args = parser.parse_args()
    OUT = args.out
    main(args.optimizers.split(","), args.lrs, tuple(args.lr_range), args.seeds, args.epochs, args.batch_size)
