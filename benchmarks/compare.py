"""Which optimizer, which learning rate? Every adamfx optimizer, tuned and at its defaults, on two tasks.

For each optimizer of the library (``adamfx.OPTIMIZERS``; ``convention="optax"``, which all of them have):

1. **tune**: a learning-rate sweep (``--lrs`` log-spaced rates, one vmapped, jitted program per
   optimizer through :func:`adamfx.sweep`) on a validation split; the tuned rate is the one with the
   lowest final validation loss;
2. **compare**: ``--seeds`` seeds at the tuned rate and at the optimizer's own defaults, equal step
   budgets, reporting the final test loss (mean +- std over seeds), the steps to reach a target loss
   (1.1x the best final loss of any optimizer on that task, read from the evaluation curve), the time
   per step (one model, jitted, all optimizers timed in turn) and the state bytes per parameter.

Tasks: (a) the flagship's MLP on scikit-learn's digits (train / validation / test split), mini-batches
of 32; (b) the character-level transformer LM of ``benchmarks/convergence.py`` (smaller: width 64) on
the standard library's ``.py`` sources (train / validation / test byte ranges).

Prints markdown tables, writes ``benchmarks/out/compare.json`` and ``compare_<task>.png`` (evaluation
curves at the tuned rate). Run: ``python benchmarks/compare.py``; ``--quick`` is a smoke run of seconds per
optimizer; ``--optimizers adam,lion`` picks some; ``--tag`` names the outputs and ``--merge`` joins runs over
disjoint optimizers (each with adam). Cost: one compiled program per optimizer and task; the digits task at
``--lrs 9 --digits-steps 600`` took ~2.5 minutes, the character LM ~40 minutes at ``--lrs 6 --lm-steps 50
--lm-batch 8`` in two processes on a loaded 2-core CPU (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import adamfx  # noqa: E402
from benchmarks import harness  # noqa: E402

OUT = harness.OUT
CONVENTION = "optax"


def chosen(names: str | None) -> list[str]:
    """``--optimizers``: comma-separated names of adamfx.OPTIMIZERS (``None``: all of them, in its order)."""
    if names is None:
        return list(adamfx.OPTIMIZERS)
    unknown = sorted(set(names.split(",")) - set(adamfx.OPTIMIZERS))
    if unknown:
        raise SystemExit(f"--optimizers: {unknown} are not adamfx optimizers (adamfx.OPTIMIZERS: {adamfx.OPTIMIZERS})")
    return names.split(",")


def build(name: str, learning_rate: float | None = None) -> optax.GradientTransformation:
    """The optimizer at its defaults, or with ``learning_rate``."""
    kwargs = {} if learning_rate is None else {"learning_rate": learning_rate}
    return getattr(adamfx, name)(**kwargs, convention=CONVENTION)


def evaluation_params(name: str) -> Callable:
    """``(state, params) -> params to evaluate``: schedule-free optimizers evaluate their averaged iterate x."""
    if name.startswith("schedule_free"):
        return adamfx.schedule_free_eval_params
    return lambda state, params: params


@dataclasses.dataclass
class Task:
    """A training problem as pure functions on a params dict, with K-member batches drawn per seed."""

    name: str
    init: Callable[[jax.Array], dict]  # key -> params
    loss: Callable[[dict, jax.Array, jax.Array], jax.Array]  # (params, x, y) -> mean loss
    batches: Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray]]  # (seeds, start, steps) -> x, y
    validation: tuple[jax.Array, jax.Array]
    test: tuple[jax.Array, jax.Array]
    steps: int
    chunk: int  # steps per jitted scan; the evaluation curve has one point per chunk

    def __post_init__(self):
        self.init_members = jax.jit(lambda keys: adamfx.sweep_params(self.init, keys=keys))  # keys -> K members


def digits_task(steps: int) -> Task:
    sys.path.insert(0, str(ROOT / "examples"))
    from digits_mlp import MLP, load_data
    from flax import nnx

    (x_train, y_train), validation, test = load_data(0)
    graphdef = nnx.graphdef(MLP(nnx.Rngs(0)))

    def init(key):
        return nnx.to_pure_dict(nnx.split(MLP(nnx.Rngs(params=key)), nnx.Param)[1])

    def loss(params, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(nnx.merge(graphdef, params)(x), y).mean()

    def batches(seeds, start, count, batch=32):
        rows = [np.random.default_rng([int(s), start]).integers(0, len(x_train), (count, batch)) for s in seeds]
        idx = np.stack(rows, axis=1)  # (steps, members, batch)
        return x_train[idx], y_train[idx]

    return Task("digits MLP", init, loss, batches, validation, test, steps, chunk=max(1, steps // 20))


def charlm_task(steps: int, n_bytes: int = 600_000, batch: int = 16, context: int = 64) -> Task:
    from flax import nnx

    from benchmarks.convergence import CharLM, stdlib_text

    text = stdlib_text(n_bytes)
    train, val, test = np.split(text, [int(0.8 * len(text)), int(0.9 * len(text))])
    graphdef = nnx.graphdef(CharLM(nnx.Rngs(0), width=64, context=context))

    def windows(data, rng, shape):
        starts = rng.integers(0, len(data) - context - 1, shape)
        w = data[starts[..., None] + np.arange(context + 1)].astype(np.int32)
        return w[..., :-1], w[..., 1:]

    def init(key):
        return nnx.to_pure_dict(nnx.split(CharLM(nnx.Rngs(params=key), width=64, context=context), nnx.Param)[1])

    def loss(params, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(nnx.merge(graphdef, params)(x), y).mean()

    def batches(seeds, start, count):
        parts = [windows(train, np.random.default_rng([int(s), start]), (count, batch)) for s in seeds]
        return tuple(np.stack(p, axis=1) for p in zip(*parts, strict=True))  # (steps, members, batch, context)

    held_out = lambda data: windows(data, np.random.default_rng(1234), (64,))
    return Task("character LM", init, loss, batches, held_out(val), held_out(test), steps, chunk=max(1, steps // 10))


def program(task: Task, tx, eval_params) -> Callable:
    """The jitted chunk of training ``(params, states, xs, ys) -> (params, states, val loss, test loss)``, vmapped
    over members. One program per optimizer: every sweep of its state with the same member count reuses it."""

    def step(params, state, x, y):
        grads = jax.grad(task.loss)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    member_step = jax.vmap(step)
    evaluate = jax.vmap(lambda state, params, x, y: task.loss(eval_params(state, params), x, y), (0, 0, None, None))

    @jax.jit
    def chunk(params, states, xs, ys):
        def body(carry, batch):
            return member_step(*carry, *batch), None

        (params, states), _ = jax.lax.scan(body, (params, states), (xs, ys))
        return params, states, evaluate(states, params, *task.validation), evaluate(states, params, *task.test)

    return chunk


def train(task: Task, tx, chunk: Callable, seeds: np.ndarray, learning_rates: np.ndarray | None) -> dict:
    """K = len(seeds) models at once (member k: seed k, and learning rate k when given), ``chunk`` from
    :func:`program` for ``tx``.

    Returns the validation and test loss curves, shape (chunks, K), and the steps at which they were read.
    """
    params = task.init_members(jnp.stack([jax.random.key(int(s)) for s in seeds]))
    states = jax.jit(jax.vmap(tx.init))(params)
    if learning_rates is not None:
        states = adamfx.sweep(states, batched=True, learning_rate=learning_rates)
    val, test, at = [], [], []
    for start in range(0, task.steps, task.chunk):
        count = min(task.chunk, task.steps - start)
        xs, ys = task.batches(seeds, start, count)
        params, states, v, t = chunk(params, states, xs, ys)
        val.append(np.asarray(v))
        test.append(np.asarray(t))
        at.append(start + count)
    return {"val": np.stack(val), "test": np.stack(test), "steps": np.asarray(at)}


def tune(task: Task, tx, chunk: Callable, lrs: np.ndarray) -> float:
    """The learning rate of ``lrs`` with the lowest final validation loss (one seed per rate, one program)."""
    run = train(task, tx, chunk, np.zeros(len(lrs), int), lrs)
    final = np.nan_to_num(run["val"][-1], nan=np.inf)
    return float(lrs[int(np.argmin(final))])


def default_learning_rate(name: str, tx) -> float | None:
    """The default learning rate, when the optimizer at its defaults is ``tx`` (built with another rate) with that
    rate in its state; else None.

    Checked, not assumed: two updates of ``tx``'s state swept to the default rate must equal the default optimizer's
    updates exactly (a default rate that is not a number in the state, e.g. optax Adafactor's relative step, or
    another default that differs fails the check).
    """
    params = {"w": jnp.linspace(-1.0, 1.0, 24).reshape(6, 4), "b": jnp.linspace(0.5, 1.0, 4)}  # small: eager steps
    default = build(name)
    rate = adamfx.hyperparams(default.init(params)).get("learning_rate")
    if rate is None or np.ndim(rate) != 0:
        return None
    rate = float(rate)
    expected = default.init(params)
    got = jax.tree.map(lambda x: x[0], adamfx.sweep(tx.init(params), learning_rate=[rate]))
    for t in range(2):
        grads = jax.tree.map(lambda p, t=t: jnp.cos(p * (t + 1) + 0.3), params)
        (want, expected), (have, got) = default.update(grads, expected, params), tx.update(grads, got, params)
        if jax.tree.structure(want) != jax.tree.structure(have) or any(
            not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(have), strict=True)
        ):
            return None
    return rate


def tuned_and_default(task: Task, name: str, tx, chunk: Callable, best: float, seeds: np.ndarray, size: int) -> dict:
    """The runs at the tuned rate and at the defaults, ``len(seeds)`` members each.

    To compile nothing new, they reuse the tuning sweep's program (``size`` members): when the defaults differ from
    ``tx`` only in the learning rate (:func:`default_learning_rate`), both settings are members of one run; any
    members left over train further seeds at the tuned rate and are not reported (they keep the program's shape).
    Otherwise the tuned run reuses the program and the defaults get their own.
    """
    n = len(seeds)
    spare = np.arange(n, n + size)
    rate = default_learning_rate(name, tx)
    if rate is not None and size >= 2 * n:
        members = np.concatenate([seeds, seeds, spare[: size - 2 * n]])
        rates = np.full(size, best)
        rates[n : 2 * n] = rate
        both = train(task, tx, chunk, members, rates)
        part = lambda cut: {"val": both["val"][:, cut], "test": both["test"][:, cut], "steps": both["steps"]}
        return {"tuned": part(slice(0, n)), "default": part(slice(n, 2 * n))}
    if size >= n:
        tuned = train(task, tx, chunk, np.concatenate([seeds, spare[: size - n]]), np.full(size, best))
        tuned = {"val": tuned["val"][:, :n], "test": tuned["test"][:, :n], "steps": tuned["steps"]}
    else:
        tuned = train(task, tx, program(task, tx, evaluation_params(name)), seeds, np.full(n, best))
    default = build(name)
    chunk = program(task, default, evaluation_params(name))
    return {"tuned": tuned, "default": train(task, default, chunk, seeds, None)}


def time_per_step(task: Task, names: list[str], lrs: dict[str, float], samples: int) -> dict[str, float]:
    """Seconds per jitted training step of one model, every optimizer timed in turn (same run)."""
    params = task.init(jax.random.key(0))
    x, y = (b[0, 0] for b in task.batches(np.zeros(1, int), 0, 1))
    runners = {}
    for name in names:
        tx = build(name, lrs[name])

        @jax.jit
        def step(params, state, tx=tx):
            updates, state = tx.update(jax.grad(task.loss)(params, x, y), state, params)
            return optax.apply_updates(params, updates), state

        carry = [params, tx.init(params)]

        def run(step=step, carry=carry):
            carry[:] = step(*carry)
            jax.block_until_ready(carry)

        runners[name] = run
    times = harness.interleaved(runners, samples)
    return {name: harness.median(t) for name, t in times.items()}


def state_bytes_per_param(task: Task, name: str) -> float:
    params = task.init(jax.random.key(0))
    state = build(name).init(params)
    return sum(x.nbytes for x in jax.tree.leaves(state)) / sum(x.size for x in jax.tree.leaves(params))


def steps_to(curve: np.ndarray, steps: np.ndarray, target: float) -> float:
    """The first step at which the mean-over-seeds curve is at or below ``target`` (inf if never)."""
    below = np.flatnonzero(np.nan_to_num(curve.mean(1), nan=np.inf) <= target)
    return float(steps[below[0]]) if len(below) else float("inf")


def compare(task: Task, names: list[str], lrs: np.ndarray, seeds: np.ndarray, samples: int) -> dict:
    results = {}
    for name in names:
        start = time.perf_counter()
        try:
            tx = build(name, float(lrs[0]))
            chunk = program(task, tx, evaluation_params(name))
            best = tune(task, tx, chunk, lrs)
            runs = tuned_and_default(task, name, tx, chunk, best, seeds, len(lrs))
        except Exception as error:  # an optimizer that cannot run here is reported, not hidden
            results[name] = {"error": f"{type(error).__name__}: {error}"}
            print(f"  {name}: {results[name]['error']}")
            continue
        results[name] = {"tuned_lr": best, "runs": runs, "bytes_per_param": state_bytes_per_param(task, name)}
        finals = {kind: run["test"][-1] for kind, run in runs.items()}
        losses = ", ".join(f"{kind} {np.mean(v):.4f} +- {np.std(v):.4f}" for kind, v in finals.items())
        print(f"  {name}: tuned lr {best:.3g}, final test loss {losses}, {time.perf_counter() - start:.0f} s")
    ran = [n for n in names if "runs" in results[n]]
    seconds = time_per_step(task, ran, {n: results[n]["tuned_lr"] for n in ran}, samples)
    best_final = min(np.nanmean(results[n]["runs"][k]["test"][-1]) for n in ran for k in ("tuned", "default"))
    target = 1.1 * best_final
    for name in ran:
        results[name]["seconds_per_step"] = seconds[name]
        for run in results[name]["runs"].values():
            run["steps_to_target"] = steps_to(run["test"], run["steps"], target)
    return {"task": task.name, "steps": task.steps, "target": target, "results": results}


def report(comparison: dict) -> str:
    base = comparison["results"].get("adam", {}).get("seconds_per_step")
    lines = [
        f"### {comparison['task']}: {comparison['steps']} steps, target loss {comparison['target']:.4f} "
        "(1.1x the best final test loss)",
        "",
        "| optimizer | tuned lr | test loss, tuned | steps to target | test loss, defaults | steps to target "
        "| time/step vs adam | state B/param |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in comparison["results"].items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'][:80]} |||||||")
            continue
        cells = []
        for kind in ("tuned", "default"):
            final = r["runs"][kind]["test"][-1]
            reach = r["runs"][kind]["steps_to_target"]
            cells += [f"{np.mean(final):.4f} +- {np.std(final):.4f}", "never" if np.isinf(reach) else f"{reach:.0f}"]
        ratio = f"{r['seconds_per_step'] / base:.2f}x" if base else "-"
        lines.append(f"| {name} | {r['tuned_lr']:.3g} | {' | '.join(cells)} | {ratio} | {r['bytes_per_param']:.2f} |")
    return "\n".join(lines)


def plot(comparison: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    results = {n: r for n, r in comparison["results"].items() if "runs" in r}
    for i, (name, r) in enumerate(results.items()):
        run = r["runs"]["tuned"]
        mean = np.nanmean(run["test"], 1)
        color = plt.cm.tab20(i / max(len(results) - 1, 1))
        ax.plot(run["steps"], mean, color=color, label=f"{name} (lr {r['tuned_lr']:.2g})")
        ax.fill_between(run["steps"], run["test"].min(1), run["test"].max(1), color=color, alpha=0.15, lw=0)
    ax.axhline(comparison["target"], color="k", ls=":", lw=1)
    ax.set(yscale="log", xlabel="step", ylabel="test loss", title=f"{comparison['task']}: tuned learning rates")
    ax.legend(ncol=2, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def as_json(value):
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    return value


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 rates, 1 seed, a few steps per task")
    parser.add_argument("--optimizers", default=None, help="comma-separated names (default: all of adamfx.OPTIMIZERS)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--lrs", type=int, default=10, help="learning rates in the tuning sweep (1e-4 .. 1)")
    parser.add_argument("--digits-steps", type=int, default=900, help="about 20 epochs of mini-batches of 32")
    parser.add_argument("--lm-steps", type=int, default=300)
    parser.add_argument("--lm-batch", type=int, default=16, help="windows of 64 bytes per character-LM step")
    parser.add_argument("--tasks", default="digits,charlm")
    parser.add_argument("--tag", default="", help="suffix of the output names (compare<tag>.json, ...)")
    parser.add_argument("--merge", nargs="+", type=Path, help="merge the JSON of runs over disjoint optimizers")
    args = parser.parse_args(argv)
    if args.merge:
        return merge_runs(args.merge, args.tag)
    if args.quick:
        args.seeds, args.lrs, args.digits_steps, args.lm_steps = 1, 3, 20, 10
    names = chosen(args.optimizers)
    lrs = np.logspace(-4, 0, args.lrs)
    seeds = np.arange(args.seeds)
    makers = {
        "digits": lambda: digits_task(args.digits_steps),
        "charlm": lambda: charlm_task(args.lm_steps, batch=args.lm_batch),
    }
    comparisons = {}
    OUT.mkdir(parents=True, exist_ok=True)
    for key in args.tasks.split(","):
        task = makers[key]()
        print(f"{task.name}: {len(names)} optimizers, {len(lrs)} rates, {len(seeds)} seeds, {task.steps} steps")
        comparisons[key] = compare(task, names, lrs, seeds, samples=5 if args.quick else 20)
        print(report(comparisons[key]))
        plot(comparisons[key], OUT / f"compare_{key}{args.tag}.png")
    harness.write_json(OUT / f"compare{args.tag}.json", {"machine": harness.machine(), **as_json(comparisons)})
    print(f"wrote {OUT / f'compare{args.tag}.json'} and the plots compare_<task>{args.tag}.png")
    return comparisons


def merge_runs(paths: list[Path], tag: str) -> dict:
    """One comparison per task from runs over disjoint sets of optimizers (separate processes, run side by side),
    each of which timed adam too: a run's times per step are rescaled by the ratio of the first run's adam time to
    its own (so every ratio to adam stays a same-run ratio), and the target loss and the steps to it are recomputed
    over all optimizers."""
    runs = [json.loads(path.read_text()) for path in paths]
    comparisons = {}
    for key in (k for k in runs[0] if k != "machine"):
        parts = [run[key] for run in runs]
        base = parts[0]["results"]["adam"]["seconds_per_step"]
        results = {}
        for part in parts:
            scale = base / part["results"]["adam"]["seconds_per_step"]
            for name, r in part["results"].items():
                if name in results:
                    continue
                if "runs" in r:
                    r["seconds_per_step"] *= scale
                    for run in r["runs"].values():
                        run.update({k: np.asarray(run[k]) for k in ("val", "test", "steps")})
                results[name] = r
        ran = [r for r in results.values() if "runs" in r]
        target = 1.1 * min(np.nanmean(r["runs"][k]["test"][-1]) for r in ran for k in ("tuned", "default"))
        for r in ran:
            for run in r["runs"].values():
                run["steps_to_target"] = steps_to(run["test"], run["steps"], target)
        order = [n for n in adamfx.OPTIMIZERS if n in results]
        comparisons[key] = {**parts[0], "target": target, "results": {n: results[n] for n in order}}
        print(report(comparisons[key]))
        plot(comparisons[key], OUT / f"compare_{key}{tag}.png")
    harness.write_json(OUT / f"compare{tag}.json", {"machine": runs[0]["machine"], **as_json(comparisons)})
    print(f"merged {len(paths)} runs into {OUT / f'compare{tag}.json'}")
    return comparisons


if __name__ == "__main__":
    main()
