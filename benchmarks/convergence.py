"""Does low-memory moment storage train as well as float32? The same runs with fp32, bf16, int8 and factored state.

Two tasks, each trained with ``adamfx.adam`` and every storage from the same
initialisation and the same data order (only the storage differs):

(a) a Flax NNX MLP (64-256-256-10) on scikit-learn's digits, several seeds
    (init and shuffling), reporting test accuracy (mean and spread over seeds);
(b) a small character-level transformer language model (Flax NNX, 2 blocks,
    width 96, context 64, 270K parameters) trained on the Python standard
    library's own ``.py`` sources, reporting the held-out loss (nats per byte) and its relative
    difference to fp32; two fp32 seeds show the seed-to-seed spread.

Prints tables, writes ``benchmarks/out/convergence.json`` and loss curves
``benchmarks/out/convergence_digits.png`` / ``convergence_charlm.png``.
Run: ``python benchmarks/convergence.py`` (a few minutes on 2 CPU cores;
``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import adamfx
from benchmarks.lowbit_configs import STORAGES as ALL_STORAGES

OUT = Path(__file__).resolve().parent / "out"

STORAGES = {
    name: ALL_STORAGES[name] for name in ["fp32", "bf16", "int8", "int8 nearest", "factored", "int8 + factored"]
}


def state_bytes_per_param(optimizer: nnx.Optimizer, model: nnx.Module) -> float:
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    state = jax.tree.leaves(nnx.state(optimizer.opt_state))
    return sum(x.nbytes for x in state) / sum(x.size for x in params)


# ----------------------------------------------------------------------------- (a) digits


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(64, 256, rngs=rngs), nnx.Linear(256, 256, rngs=rngs)])
        self.out = nnx.Linear(256, 10, rngs=rngs)

    def __call__(self, x):
        for layer in self.layers:
            x = jax.nn.relu(layer(x))
        return self.out(x)


def digits_data(seed: int = 0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    return train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)


def train_digits(storage: str, seed: int, epochs: int, data) -> dict:
    x_train, x_test, y_train, y_test = data
    model = MLP(nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, adamfx.adam(1e-3, **STORAGES[storage]), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    rng = np.random.default_rng(seed)
    batch, losses = 32, []
    start = time.perf_counter()
    for _ in range(epochs):
        order = rng.permutation(len(x_train))
        epoch_loss = []
        for i in range(0, len(order) - batch + 1, batch):
            idx = order[i : i + batch]
            epoch_loss.append(float(step(model, optimizer, x_train[idx], y_train[idx])))
        losses.append(float(np.mean(epoch_loss)))
    accuracy = float((np.asarray(model(x_test)).argmax(-1) == y_test).mean() * 100)
    return {
        "test_accuracy": accuracy,
        "train_loss": losses,
        "seconds": time.perf_counter() - start,
        "state_bytes_per_param": state_bytes_per_param(optimizer, model),
    }


# ----------------------------------------------------------------------------- (b) character LM


class Block(nnx.Module):
    def __init__(self, width: int, heads: int, rngs: nnx.Rngs):
        self.heads = heads
        self.ln1, self.ln2 = nnx.LayerNorm(width, rngs=rngs), nnx.LayerNorm(width, rngs=rngs)
        self.qkv = nnx.Linear(width, 3 * width, rngs=rngs)
        self.proj = nnx.Linear(width, width, rngs=rngs)
        self.fc = nnx.Linear(width, 4 * width, rngs=rngs)
        self.out = nnx.Linear(4 * width, width, rngs=rngs)

    def __call__(self, x):
        b, t, d = x.shape
        q, k, v = jnp.split(self.qkv(self.ln1(x)), 3, axis=-1)
        split = lambda z: z.reshape(b, t, self.heads, d // self.heads)
        y = jax.nn.dot_product_attention(split(q), split(k), split(v), is_causal=True)
        x = x + self.proj(y.reshape(b, t, d))
        return x + self.out(jax.nn.gelu(self.fc(self.ln2(x))))


class CharLM(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, vocab: int = 256, width: int = 96, context: int = 64, depth: int = 2):
        self.embed = nnx.Embed(vocab, width, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (context, width)))
        self.blocks = nnx.List([Block(width, 4, rngs) for _ in range(depth)])
        self.ln = nnx.LayerNorm(width, rngs=rngs)
        self.head = nnx.Linear(width, vocab, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def stdlib_text(n_bytes: int) -> np.ndarray:
    """The first ``n_bytes`` of the standard library's top-level ``.py`` files (sorted), as bytes."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.glob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= n_bytes:
            break
    return np.frombuffer(b"".join(chunks)[:n_bytes], np.uint8)


def lm_batches(data: np.ndarray, steps: int, batch: int, context: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        starts = rng.integers(0, len(data) - context - 1, batch)
        window = np.stack([data[s : s + context + 1] for s in starts])
        yield window[:, :-1].astype(np.int32), window[:, 1:].astype(np.int32)


def train_charlm(storage: str, seed: int, steps: int, train: np.ndarray, held_out: list) -> dict:
    model = CharLM(nnx.Rngs(seed))
    schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, steps // 20, steps, 3e-4)
    optimizer = nnx.Optimizer(model, adamfx.adam(schedule, **STORAGES[storage]), wrt=nnx.Param)

    def loss_fn(model, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    @nnx.jit
    def step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        optimizer.update(model, grads)
        return loss

    evaluate = nnx.jit(loss_fn)

    def held_out_loss():
        return float(np.mean([float(evaluate(model, x, y)) for x, y in held_out]))

    losses, evals = [], []
    start = time.perf_counter()
    for i, (x, y) in enumerate(lm_batches(train, steps, 16, 64, seed), start=1):
        losses.append(float(step(model, optimizer, x, y)))
        if i % max(1, steps // 10) == 0:
            evals.append((i, held_out_loss()))
    return {
        "eval_loss": evals[-1][1],
        "eval_curve": evals,
        "train_loss": losses,
        "seconds": time.perf_counter() - start,
        "state_bytes_per_param": state_bytes_per_param(optimizer, model),
    }


# ----------------------------------------------------------------------------- report


def smooth(values, width: int) -> np.ndarray:
    values = np.asarray(values)
    if len(values) < width:
        return values
    return np.convolve(values, np.ones(width) / width, mode="valid")


def plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, runs in results["digits"]["runs"].items():
        curve = np.mean([r["train_loss"] for r in runs], axis=0)
        accuracy = np.mean([r["test_accuracy"] for r in runs])
        ax.plot(np.arange(1, len(curve) + 1), curve, label=f"{name} ({accuracy:.2f}% test)")
    ax.set(yscale="log", xlabel="epoch", ylabel="train loss (mean over seeds)", title="digits MLP, adamfx.adam")
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "convergence_digits.png", dpi=100)

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for name, run in results["charlm"]["runs"].items():
        axes[0].plot(smooth(run["train_loss"], 25), label=name, lw=1)
        steps, evals = zip(*run["eval_curve"], strict=True)
        axes[1].plot(steps, evals, marker="o", label=f"{name} ({run['eval_loss']:.4f})")
    axes[0].set(xlabel="step", ylabel="train loss (25-step mean)", title="character LM on the stdlib sources")
    axes[1].set(xlabel="step", ylabel="held-out loss (nats/byte)")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "convergence_charlm.png", dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few epochs and steps")
    parser.add_argument("--seeds", type=int, default=3, help="digits seeds per storage")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=600, help="character-LM training steps")
    parser.add_argument("--all-lm", action="store_true", help="also train the LM with int8 nearest and int8 + factored")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.steps = 1, 3, 60
    OUT.mkdir(exist_ok=True)
    print(f"device: {jax.devices()[0]}, jax {jax.__version__}")

    digits = {name: [] for name in STORAGES}
    for seed in range(args.seeds):
        data = digits_data(seed)
        for name in STORAGES:
            digits[name].append(train_digits(name, seed, args.epochs, data))
    reference = np.mean([r["test_accuracy"] for r in digits["fp32"]])
    print(f"\n## (a) digits MLP, {args.epochs} epochs, {args.seeds} seeds\n")
    print("| storage | state B/param | test accuracy % (mean +- std) | vs fp32 (points) | final train loss | s/run |")
    print("|---|---|---|---|---|---|")
    for name, runs in digits.items():
        acc = np.array([r["test_accuracy"] for r in runs])
        print(
            f"| {name} | {runs[0]['state_bytes_per_param']:.2f} | {acc.mean():.2f} +- {acc.std():.2f} "
            f"| {acc.mean() - reference:+.2f} | {np.mean([r['train_loss'][-1] for r in runs]):.4f} "
            f"| {np.mean([r['seconds'] for r in runs]):.1f} |"
        )

    text = stdlib_text(1_200_000 if not args.quick else 200_000)
    split = int(0.9 * len(text))
    train, held = text[:split], text[split:]
    held_out = list(lm_batches(held, 20 if not args.quick else 4, 64, 64, seed=1234))
    lm_storages = list(STORAGES) if args.all_lm else ["fp32", "bf16", "int8", "factored"]
    charlm = {name: train_charlm(name, 0, args.steps, train, held_out) for name in lm_storages}
    charlm["fp32 seed 1"] = train_charlm("fp32", 1, args.steps, train, held_out)
    base = charlm["fp32"]["eval_loss"]
    print(f"\n## (b) character LM, {args.steps} steps, {len(text) / 1e6:.1f} MB of stdlib source (90/10 split)\n")
    print("| storage | state B/param | held-out loss | vs fp32 | final train loss (50-step mean) | s/run |")
    print("|---|---|---|---|---|---|")
    for name, run in charlm.items():
        print(
            f"| {name} | {run['state_bytes_per_param']:.2f} | {run['eval_loss']:.4f} "
            f"| {(run['eval_loss'] / base - 1) * 100:+.2f}% | {np.mean(run['train_loss'][-50:]):.4f} "
            f"| {run['seconds']:.0f} |"
        )
    results = {
        "digits": {"epochs": args.epochs, "seeds": args.seeds, "runs": digits},
        "charlm": {"steps": args.steps, "bytes": len(text), "runs": charlm},
        "device": str(jax.devices()[0]),
    }
    (OUT / "convergence.json").write_text(json.dumps(results))
    plot(results)
    print(f"\nwrote {OUT / 'convergence.json'}, convergence_digits.png and convergence_charlm.png")


if __name__ == "__main__":
    main()
