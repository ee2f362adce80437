"""Vectorized sweeps (issue 14, item 1): member k of ``jax.vmap(tx.update)`` over ``adamfx.sweep``.

Reference: for every member, an ordinary jitted run of the optimizer *built
with that member's values at construction* (``adamfx.adam(learning_rate=lr_k,
b1=b1_k, ...)``), which never touches ``sweep`` or ``set_hyperparams``. The
problem is a noisy quadratic with a feedback from the params, in float32;
members must agree with their reference to 1e-6 (``peers.max_rel_diff``).
``SWEPT`` lists the Adam-era optimizers (what each is built with and which
hyperparameters are swept; every optimizer in every convention); every other
optimizer of the shared registry (``tests/registry.py``) is swept from its
registry entry (learning rate and one more hyperparameter, in each of its
conventions), so a new optimizer in the registry is covered without an edit here.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamfx
from tests import peers, registry
from tests.compile_count import compiles

STEPS = 12
TOLERANCE = 1e-6  # max relative difference, float32 (peers.max_rel_diff)
K = 3
LRS = (3e-3, 1e-2, 3e-2)
SHAPES = {"w": (64, 80), "b": (80,), "s": ()}  # w has >= 4096 elements, so int8 quantizes it
CONVENTIONS = tuple(adamfx.CONVENTIONS)

# optimizer: (arguments every member is built with, {hyperparameter: K values})
SWEPT = {
    "adam": ({}, {"learning_rate": LRS, "b1": (0.8, 0.9, 0.95), "b2": (0.99, 0.999, 0.9999)}),
    "adamw": ({}, {"learning_rate": LRS, "weight_decay": (1e-3, 1e-2, 0.1)}),
    "amsgrad": ({}, {"learning_rate": LRS, "b2": (0.9, 0.99, 0.999)}),
    "sgd": ({"momentum": 0.9}, {"learning_rate": LRS, "momentum": (0.5, 0.9, 0.99)}),
    "adagrad": ({}, {"learning_rate": (0.03, 0.1, 0.3), "decay": (0.0, 1e-2, 0.1)}),
    "rmsprop": ({"centered": True, "momentum": 0.9}, {"learning_rate": LRS, "rho": (0.8, 0.9, 0.99)}),
    "adadelta": ({}, {"learning_rate": (0.3, 1.0, 3.0), "rho": (0.8, 0.9, 0.95)}),
    "nadam": ({}, {"learning_rate": LRS, "b1": (0.8, 0.9, 0.95)}),
    "nadamw": ({}, {"learning_rate": LRS, "weight_decay": (1e-3, 1e-2, 0.1)}),
    "adamax": ({}, {"learning_rate": LRS, "b1": (0.8, 0.9, 0.95), "b2": (0.99, 0.999, 0.9999)}),
    "radam": ({}, {"learning_rate": LRS, "b2": (0.9, 0.95, 0.999), "threshold": (4.0, 5.0, 6.0)}),
}


def member(values: dict, k: int) -> dict:
    return {name: column[k] for name, column in values.items()}


def problem(seed: int = 0):
    """``grad(params, t) = a * (params - target) + noise[t]``: jittable, float32."""
    rng = np.random.default_rng(seed)
    a = {n: jnp.asarray(rng.uniform(0.5, 2.0, s), jnp.float32) for n, s in SHAPES.items()}
    target = {n: jnp.asarray(rng.standard_normal(s), jnp.float32) for n, s in SHAPES.items()}
    noise = {n: jnp.asarray(0.5 * rng.standard_normal((STEPS, *s)), jnp.float32) for n, s in SHAPES.items()}

    def grad(params, t):
        return jax.tree.map(lambda p, a_, c, e: a_ * (p - c) + e[t], params, a, target, noise)

    return grad


def init_params(key):
    keys = dict(zip(SHAPES, jax.random.split(key, len(SHAPES)), strict=True))
    return {n: jax.random.normal(keys[n], s, jnp.float32) for n, s in SHAPES.items()}


PARAMS = init_params(jax.random.key(0))


def trajectory(tx, state, params, grad, vmapped: bool = False):
    """Params after each of STEPS jitted steps: (steps, n) or, vmapped, (K, steps, n)."""

    def step(carry, t):
        params, state = carry
        update = jax.vmap(tx.update) if vmapped else tx.update
        grads = jax.vmap(grad, in_axes=(0, None))(params, t) if vmapped else grad(params, t)
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        return (params, state), params

    _, rows = jax.jit(lambda p, s: jax.lax.scan(step, (p, s), jnp.arange(STEPS)))(params, state)
    flat = jnp.concatenate([jnp.reshape(rows[n], (*rows[n].shape[: 1 + vmapped], -1)) for n in sorted(SHAPES)], -1)
    return np.moveaxis(np.asarray(flat), 1, 0) if vmapped else np.asarray(flat)


def check_members(
    build, values, params=PARAMS, batched_params=None, group=None, batched_state=False, rounding_flips=False
):
    """Member k of the sweep of ``build(**shared)`` equals the run of ``build(**member k)``.

    ``rounding_flips``: the state rounds (bfloat16 moments): XLA fuses the vmapped
    moment update differently from the unbatched one (FMA contraction: one float32
    ulp), and a rounding decision whose threshold falls inside that ulp flips, about
    once in 2^16 element-steps. Then at most 0.1% of the entries may differ, each by
    at most one rounding's effect (relative 1e-3); all others stay within ``TOLERANCE``.
    """
    grad = problem()
    tx = build()
    if batched_params is None:
        batched_params = adamfx.sweep_params(params, K)
        member_params = [params] * K
    else:
        member_params = [jax.tree.map(lambda x, k=k: x[k], batched_params) for k in range(K)]
    state = jax.vmap(tx.init)(batched_params) if batched_state else tx.init(params)
    states = adamfx.sweep(state, group=group, batched=batched_state, **values)
    swept = trajectory(tx, states, batched_params, grad, vmapped=True)
    for k in range(K):
        reference_tx = build(**member(values, k))
        expected = trajectory(reference_tx, reference_tx.init(member_params[k]), member_params[k], grad)
        if rounding_flips:
            off = np.abs(swept[k] - expected) / np.maximum(np.abs(expected), 1) > TOLERANCE  # as max_rel_diff
            assert off.mean() <= 1e-3 and peers.max_rel_diff(swept[k], expected) <= 1e-3, (k, off.mean())
        else:
            assert peers.max_rel_diff(swept[k], expected) <= TOLERANCE, (k, peers.max_rel_diff(swept[k], expected))
        assert peers.max_rel_diff(swept[k], swept[(k + 1) % K]) > 1e-4  # the members really differ


def _cases():
    """Every optimizer x convention; by default each optimizer in one convention (all three covered), the rest slow."""
    for i, name in enumerate(SWEPT):
        for j, convention in enumerate(CONVENTIONS):
            marks = () if i % len(CONVENTIONS) == j else pytest.mark.slow
            yield pytest.param(name, convention, id=f"{name}-{convention}", marks=marks)


@pytest.mark.parametrize(("name", "convention"), _cases())
def test_member_equals_the_optimizer_built_with_its_values(name, convention):
    shared, values = SWEPT[name]

    def build(**chosen):
        return getattr(adamfx, name)(**{"learning_rate": LRS[0], **shared, **chosen}, convention=convention)

    check_members(build, values)


# The second hyperparameter swept for a registry optimizer: the first of these its state holds under the name of a
# constructor argument, with three valid values.
SECOND = {"b1": (0.8, 0.9, 0.95), "momentum": (0.5, 0.9, 0.95), "b2": (0.99, 0.999, 0.9999)}
# Constructor arguments that set a state name of another parameter group: muon's AdamW leaves hold their rate as
# ``learning_rate`` too (the registry builds muon with both equal), so a member's reference sets both.
TWINS = {"learning_rate": "adam_learning_rate"}
# Shared arguments over the registry's, where its values barely move the params in STEPS steps (the members must
# differ): prodigy's d0 = 1e-6 moves them by ~1e-5.
SHARED = {"prodigy": {"d0": 1e-3}}


def _registry_cases():
    """Every registry optimizer that SWEPT does not list, in each of its conventions; by default one convention per
    optimizer (taken in turn), the rest slow."""
    conventions: dict = {}
    for entry in registry.OPTIMIZERS:
        if entry.factory.__name__ not in SWEPT:
            conventions.setdefault(entry.factory, []).append(entry)
    for i, entries in enumerate(conventions.values()):
        for j, entry in enumerate(entries):
            marks = () if i % len(entries) == j else pytest.mark.slow
            yield pytest.param(entry, id=entry.id, marks=marks)


def test_registry_optimizers_are_all_swept():
    """The check below draws from the registry: every optimizer there is swept here, in every convention."""
    tested = {(e.factory.__name__, e.convention) for e in (case.values[0] for case in _registry_cases())}
    tested |= {(name, convention) for name in SWEPT for convention in CONVENTIONS}
    assert {(e.factory.__name__, e.convention) for e in registry.OPTIMIZERS} <= tested


@pytest.mark.parametrize("entry", _registry_cases())
def test_registry_member_equals_the_optimizer_built_with_its_values(entry):
    lr = entry.hyperparams["learning_rate"]
    arguments = set(inspect.signature(entry.factory).parameters)
    shared = SHARED.get(entry.factory.__name__, {})
    held = set(adamfx.hyperparams(entry.build(**shared).init(PARAMS)))
    second = next(name for name in SECOND if name in held & arguments)
    values = {"learning_rate": (0.5 * lr, lr, 2 * lr), second: SECOND[second]}

    def build(**chosen):
        twins = {TWINS[n]: v for n, v in chosen.items() if TWINS.get(n) in entry.hyperparams}
        return entry.build(**shared, **chosen, **twins)

    check_members(build, values)


def _every_name():
    """Every registered optimizer x convention x hyperparameter name its state holds and its factory takes.

    By default the optimizers of SWEPT in every convention, the others in one (``registry.runs_by_default``).
    """
    for param in registry.cases(registry.OPTIMIZERS, lambda e: e.name in SWEPT or registry.runs_by_default(e)):
        (entry,) = param.values
        state = entry.build().init(PARAMS)
        for hyperparameter in sorted(set(adamfx.hyperparams(state)) & set(entry.hyperparams) - {"learning_rate"}):
            yield pytest.param(entry, hyperparameter, id=f"{entry.id}-{hyperparameter}", marks=param.marks)


@pytest.mark.parametrize(("entry", "hyperparameter"), _every_name())
def test_every_name_means_the_constructor_argument(entry, hyperparameter):
    """The swept state of each member equals the state built with its value (no run: every name, cheaply)."""
    value = registry.OTHER_VALUES[hyperparameter]
    if hyperparameter == "decay" and entry.hyperparams.get("lr_decay"):
        pytest.skip("adagrad takes one of its two inverse-time decays")
    swept = adamfx.sweep(entry.build().init(PARAMS), **{hyperparameter: [value]})
    expected = entry.build_as_the_state_holds(**{hyperparameter: value}).init(PARAMS)
    assert jax.tree.structure(swept) == jax.tree.structure(expected)
    for got, want in zip(jax.tree.leaves(swept), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(got[0], want)


STORAGES = {
    "bf16": {"mu_dtype": jnp.bfloat16, "nu_dtype": jnp.bfloat16},
    "int8": {"mu_dtype": "int8", "nu_dtype": "int8"},
    "factored": {"nu_dtype": "factored"},
}


@pytest.mark.parametrize("storage", STORAGES)
def test_every_storage(storage):
    def build(**chosen):
        return adamfx.adam(**{"learning_rate": LRS[0], **STORAGES[storage], **chosen})

    check_members(build, {"learning_rate": LRS, "b2": (0.99, 0.999, 0.9999)}, rounding_flips=storage == "bf16")


def test_fused():
    def build(**chosen):
        return adamfx.fused(
            adamfx.adamw(**{"learning_rate": LRS[0], "weight_decay_mask": adamfx.exclude_bias_and_norm, **chosen})
        )

    check_members(build, {"learning_rate": LRS, "weight_decay": (1e-3, 1e-2, 0.1)})


def test_multi_steps():
    check_members(
        lambda **chosen: adamfx.multi_steps(adamfx.adam(**{"learning_rate": LRS[0], **chosen}), every_k_schedule=3),
        {"learning_rate": LRS, "b1": (0.8, 0.9, 0.95)},
    )


def test_apply_if_finite():
    check_members(
        lambda **chosen: adamfx.apply_if_finite(adamfx.nadam(**{"learning_rate": LRS[0], **chosen})),
        {"learning_rate": LRS},
    )


def test_with_ema_from_different_initial_params():
    """K initialisations from K keys; the EMA copies each member's own params (batched=True)."""

    def build(**chosen):
        momentum = chosen.pop("ema_momentum", 0.9)
        return adamfx.with_ema(adamfx.adam(**{"learning_rate": LRS[0], **chosen}), ema_momentum=momentum)

    batched = adamfx.sweep_params(init_params, keys=jax.random.split(jax.random.key(1), K))
    values = {"learning_rate": LRS, "ema_momentum": (0.5, 0.9, 0.99)}
    check_members(build, values, batched_params=batched, batched_state=True)


def test_one_parameter_group():
    labels = {"w": "body", "b": "head", "s": "head"}

    def build(learning_rate=1e-2):
        return adamfx.partition({"body": adamfx.adam(1e-3), "head": adamfx.adam(learning_rate)}, labels)

    check_members(build, {"learning_rate": LRS}, group="head")


def test_grid_from_itertools_product():
    lrs, b1s = zip(*itertools.product((1e-2, 3e-2), (0.8, 0.95)), strict=True)
    tx = adamfx.adam()
    states = adamfx.sweep(tx.init(PARAMS), learning_rate=lrs, b1=b1s)
    params = adamfx.sweep_params(PARAMS, 4)
    _, states = jax.vmap(tx.update)(params, states, params)  # hyperparams reports the lr of the last step
    for k, (lr, b1) in enumerate(zip(lrs, b1s, strict=True)):
        values = adamfx.hyperparams(jax.tree.map(lambda x, k=k: x[k], states))
        np.testing.assert_allclose([values["learning_rate"], values["b1"]], [lr, b1], rtol=1e-6)


def test_the_vmapped_loop_compiles_once():
    tx = adamfx.adam()
    grad = problem()
    traces = []

    @jax.jit
    def step(params, states, t):
        traces.append(1)
        grads = jax.vmap(grad, in_axes=(0, None))(params, t)
        updates, states = jax.vmap(tx.update)(grads, states, params)
        return optax.apply_updates(params, updates), states

    params = adamfx.sweep_params(PARAMS, 4)
    sweeps = [
        adamfx.sweep(tx.init(PARAMS), learning_rate=lrs) for lrs in ([1e-3, 3e-3, 1e-2, 3e-2], [1e-4, 1e-3, 0.1, 1.0])
    ]
    steps = [jnp.asarray(t) for t in range(STEPS)]
    with compiles() as counter:
        for states in sweeps:  # a new sweep with other values reuses the program
            for t in steps:
                params, states = step(params, states, t)
    assert len(traces) == 1
    assert counter.count == 1


# ----- errors ----------------------------------------------------------------------------------------------------


@pytest.fixture
def adam_state():
    return adamfx.adam(1e-3).init(PARAMS)


def test_sequences_of_different_lengths(adam_state):
    with pytest.raises(ValueError, match=r"one length, got \{'learning_rate': 3, 'b1': 2\}"):
        adamfx.sweep(adam_state, learning_rate=LRS, b1=(0.9, 0.99))


def test_unknown_name_lists_the_valid_ones(adam_state):
    with pytest.raises(KeyError, match=r"\['momentum'\].*\['b1', 'b2', 'decay', 'eps', 'eps_root', 'learning_rate'\]"):
        adamfx.sweep(adam_state, momentum=(0.9, 0.99))


def test_a_scheduled_learning_rate_cannot_be_swept():
    state = adamfx.adam(optax.exponential_decay(1e-2, 10, 0.5)).init(PARAMS)
    with pytest.raises(KeyError, match="schedule"):
        adamfx.sweep(state, learning_rate=LRS)
    with pytest.raises(ValueError, match="not a schedule"):
        adamfx.sweep(adamfx.adam().init(PARAMS), learning_rate=optax.constant_schedule(1e-3))


def test_out_of_range_names_the_member(adam_state):
    with pytest.raises(ValueError, match=r"member 1 of 3.*b1=1\.0 is invalid.*\[0\.0, 1\.0\)"):
        adamfx.sweep(adam_state, b1=(0.9, 1.0, 0.5))
    with pytest.raises(ValueError, match=r"member 2 of 3.*learning_rate=-0\.1"):
        adamfx.sweep(adam_state, learning_rate=(0.1, 0.2, -0.1))


@pytest.mark.parametrize("bad", [0.1, [], [[0.1, 0.2]], ["fast"]])
def test_values_must_be_a_sequence_of_numbers(adam_state, bad):
    with pytest.raises(ValueError, match="learning_rate"):
        adamfx.sweep(adam_state, learning_rate=bad)


def test_no_values(adam_state):
    with pytest.raises(ValueError, match="at least one hyperparameter"):
        adamfx.sweep(adam_state)


def test_unknown_group(adam_state):
    with pytest.raises(KeyError, match="no parameter group 'head'"):
        adamfx.sweep(adam_state, group="head", learning_rate=LRS)


def test_batched_state_needs_the_leading_axis(adam_state):
    with pytest.raises(ValueError, match=r"leading axis of size 3.*\.count.*shape \(\)"):
        adamfx.sweep(adam_state, batched=True, learning_rate=LRS)


def test_sweep_params():
    copies = adamfx.sweep_params(PARAMS, 4)
    assert jax.tree.map(jnp.shape, copies) == {n: (4, *s) for n, s in SHAPES.items()}
    np.testing.assert_array_equal(copies["w"][3], PARAMS["w"])
    keys = jax.random.split(jax.random.key(2), 3)
    inits = adamfx.sweep_params(init_params, keys=keys)
    for k in range(3):  # K initialisations, each the one its key gives
        np.testing.assert_array_equal(inits["w"][k], init_params(keys[k])["w"])
    assert not np.allclose(inits["w"][0], inits["w"][1])


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((PARAMS,), {}, "size=None is invalid"),
        ((PARAMS, 0), {}, "size=0 is invalid"),
        ((PARAMS,), {"keys": jax.random.split(jax.random.key(0), 2)}, "needs an init function"),
        ((init_params,), {}, "one PRNG key per member"),
        ((init_params,), {"keys": jax.random.key(0)}, "one PRNG key per member"),
    ],
)
def test_sweep_params_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        adamfx.sweep_params(*args, **kwargs)


# ----- the example and the benchmark (tiny settings) -------------------------------------------------------------

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def sensitivity(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))  # the example imports the flagship's model and data
    spec = importlib.util.spec_from_file_location("sensitivity", ROOT / "examples" / "sensitivity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "OUT", tmp_path)
    yield module
    sys.modules.pop("digits_mlp", None)


def test_sensitivity_example_smoke(sensitivity, tmp_path, capsys):
    results = sensitivity.main(optimizers=("sgd", "adam"), n_lrs=3, lr_range=(1e-3, 1.0), n_seeds=2, epochs=2)
    for name in ("sgd", "adam"):
        assert results[name]["val_loss"].shape == (3, 2)  # learning rates x seeds
        assert results[name]["best_lr"] in np.logspace(-3, 0, 3)
        assert np.nanmin(results[name]["val_loss"]) < np.log(10)  # better than a uniform guess: it learned
    out = capsys.readouterr().out
    assert "best lr" in out and "decades within 10%" in out
    assert (tmp_path / "sensitivity.png").stat().st_size > 10_000


def test_sensitivity_example_covers_every_optimizer(sensitivity):
    assert {entry.factory.__name__ for entry in registry.OPTIMIZERS} <= set(sensitivity.OPTIMIZERS)


@pytest.mark.slow
def test_sensitivity_example_new_optimizers(sensitivity, capsys):
    """Muon (matrices and vectors), schedule-free (validated at x) and lamb (optax convention) run in the example."""
    names = ("muon", "schedule_free_sgd", "lamb")
    results = sensitivity.main(optimizers=names, n_lrs=2, lr_range=(1e-2, 1e-1), n_seeds=1, epochs=2)
    for name in names:
        assert np.nanmin(results[name]["val_loss"]) < np.log(10), name
    assert "lamb (optax)" in capsys.readouterr().out


def test_sensitivity_summary(sensitivity):
    lrs = np.logspace(-3, 0, 4)  # one decade apart
    loss = np.array([[2.0, 2.0], [1.05, 1.05], [1.0, 1.0], [np.nan, np.nan]])  # the last one diverged
    summary = sensitivity.summary(lrs, loss)
    assert (summary["best_lr"], summary["best_loss"], summary["best_loss_std"]) == (0.1, 1.0, 0.0)
    # within 10% (1.1): from 1e-2 (1.05) on, plus 0.05 / 0.95 of the decade towards 1e-3 (2.0); the diverged 1.0 ends it
    assert summary["decades"] == pytest.approx(1 + 0.05 / 0.95, rel=1e-12)


@pytest.mark.slow
def test_sweep_speed_quick(tmp_path):
    for module in ("flax", "sklearn", "matplotlib", "tqdm"):  # the benchmark trains the examples' digits MLP
        pytest.importorskip(module)
    env = {**os.environ, "XLA_FLAGS": ""}
    script = ROOT / "benchmarks" / "sweep_speed.py"
    subprocess.run([sys.executable, str(script), "--quick", "--out", str(tmp_path)], check=True, env=env, timeout=600)
    rows = json.loads((tmp_path / "sweep_speed.json").read_text())["results"]
    assert {(r["workload"], r["mode"], r["contender"]) for r in rows} == {
        (w, m, c)
        for w in ("update", "train, batch 32", "train, full batch", "train, full batch, x per member")
        for m in ("call", "scan")
        for c in ("vmapped", "sequential")
    }
    assert all(r["traces"] == 1 and r["median_s"] > 0 for r in rows)  # one program each, compiled once
