"""Hyperparameters in the state and value semantics (issue 6, items 1 and 2).

References: a NumPy transcription of Adam (Kingma & Ba, 2015, Alg. 1) with a
per-step learning rate; the learning rate formula ``schedule(t-1) / (1 + decay
(t-1))`` written out here; JAX's own compilation events for "no recompilation".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

import adamfx
from tests import peers
from tests.compile_count import compiles, static_tx_step


def numpy_adam(problem, lrs, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
    """Adam (coupled L2 like optax/torch when weight_decay > 0) with learning rate lrs[t-1] at step t."""
    p = problem.params_in(np.float64)
    m = {k: np.zeros_like(x) for k, x in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    rows = []
    for t, lr in enumerate(lrs, start=1):
        g = problem.grad(p, t - 1)
        for k in p:
            gk = g[k] + weight_decay * p[k]
            m[k] = b1 * m[k] + (1 - b1) * gk
            v[k] = b2 * v[k] + (1 - b2) * gk**2
            p[k] = p[k] - lr * (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
        rows.append(peers.flatten(p))
    return np.stack(rows)


def run(tx, problem, steps, changes=None):
    """Jitted trajectory; ``changes[t] = {name: value}`` is applied before step t (1-based).

    Returns (trajectory, reported learning rates, number of traces, number of compilations).
    """
    traces = []

    @jax.jit
    def step(params, state, grads):
        traces.append(1)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = {k: jnp.asarray(v) for k, v in problem.params_in(np.float64).items()}
    state = tx.init(params)
    rows, reported = [], []
    adamfx.hyperparams(state)  # its eager ops (1 - stored complement) compile once, outside the count
    with compiles() as counter:
        for t in range(1, steps + 1):
            if changes and t in changes:
                state = adamfx.set_hyperparams(state, **changes[t])
            grads = {k: jnp.asarray(v) for k, v in problem.grad(params, t - 1).items()}
            params, state = step(params, state, grads)
            rows.append(peers.flatten(params))
            reported.append(float(adamfx.hyperparams(state)["learning_rate"]))
    return np.stack(rows), np.array(reported), len(traces), counter.count


def test_learning_rate_changed_between_jitted_steps_without_recompiling():
    problem = peers.make_problem()
    lrs = [1e-2] * 5 + [3e-3] * 5
    with jax.enable_x64(True):
        traj, reported, traces, compiled = run(adamfx.adam(1e-2), problem, 10, {6: {"learning_rate": 3e-3}})
    assert traces == 1
    assert compiled == 1
    np.testing.assert_allclose(traj, numpy_adam(problem, lrs), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(reported, lrs, rtol=1e-15)


@pytest.mark.parametrize(
    "tx, values",
    [
        (adamfx.adam(1e-2), {"b1": 0.8, "b2": 0.99, "eps": 1e-6, "eps_root": 1e-9}),
        (adamfx.adam(1e-2, decay=0.01), {"decay": 0.1}),
        (adamfx.adamw(1e-2, weight_decay=1e-2), {"weight_decay": 0.1, "learning_rate": 1e-3}),
        (adamfx.amsgrad(1e-2, convention="torch"), {"b2": 0.9}),
        (adamfx.adam(1e-2, convention="keras"), {"eps": 1e-3}),
    ],
)
def test_every_hyperparameter_changes_without_recompiling(tx, values):
    problem = peers.make_problem()
    with jax.enable_x64(True):
        changed, _, traces, compiled = run(tx, problem, 6, {3: values, 5: {next(iter(values)): 0.5}})
        unchanged, *_ = run(tx, problem, 6)
    assert (traces, compiled) == (1, 1)
    assert not np.array_equal(changed[2:], unchanged[2:])  # the change reached the update


def test_hyperparameter_changes_take_effect_like_a_fresh_optimizer():
    """set_hyperparams(b1, b2, eps) before step 1 gives the trajectory of NumPy Adam with those values."""
    problem = peers.make_problem()
    with jax.enable_x64(True):
        traj, *_ = run(adamfx.adam(1e-2), problem, 8, {1: {"b1": 0.8, "b2": 0.99, "eps": 1e-4}})
    np.testing.assert_allclose(traj, numpy_adam(problem, [1e-2] * 8, 0.8, 0.99, 1e-4), rtol=1e-12, atol=1e-14)


def test_reported_learning_rate_is_the_one_applied_after_schedule_and_decay():
    problem = peers.make_problem()
    decay, steps = 0.1, 12
    schedule = lambda count: 1e-2 * 0.8 ** count.astype(jnp.float64)  # optax's schedules compute in float32
    lrs = [1e-2 * 0.8 ** (t - 1) / (1 + decay * (t - 1)) for t in range(1, steps + 1)]
    with jax.enable_x64(True):
        traj, reported, *_ = run(adamfx.adam(schedule, decay=decay), problem, steps)
    np.testing.assert_allclose(reported, lrs, rtol=1e-13)
    np.testing.assert_allclose(traj, numpy_adam(problem, lrs), rtol=1e-12, atol=1e-14)


def test_reported_learning_rate_before_the_first_step_is_the_initial_one():
    state = adamfx.adam(2e-3, decay=0.5).init({"w": jnp.zeros(2)})
    assert float(adamfx.hyperparams(state)["learning_rate"]) == pytest.approx(2e-3)


def test_unknown_names_raise_key_error_listing_the_valid_ones():
    state = adamfx.adam(1e-3).init({"w": jnp.zeros(2)})
    with pytest.raises(KeyError) as error:
        adamfx.set_hyperparams(state, learning_rat=1e-4)
    message = str(error.value)
    assert "learning_rat" in message
    for name in ("b1", "b2", "decay", "eps", "eps_root", "learning_rate"):
        assert f"'{name}'" in message


def test_scheduled_learning_rate_cannot_be_set_and_says_why():
    state = adamfx.adam(optax.constant_schedule(1e-3)).init({"w": jnp.zeros(2)})
    with pytest.raises(KeyError, match="schedule"):
        adamfx.set_hyperparams(state, learning_rate=1e-4)


@pytest.mark.parametrize("name, value", [("learning_rate", -1.0), ("b1", 1.0), ("b2", -0.1), ("eps", float("nan"))])
def test_out_of_range_values_raise_value_error(name, value):
    state = adamfx.adam(1e-3).init({"w": jnp.zeros(2)})
    with pytest.raises(ValueError, match=name):
        adamfx.set_hyperparams(state, **{name: value})


@pytest.mark.parametrize("x64", [False, True])
def test_set_keeps_dtype_shape_and_structure(x64):
    with jax.enable_x64(x64):
        state = adamfx.adam(1e-3).init({"w": jnp.zeros(2, jnp.float32)})
        new = adamfx.set_hyperparams(state, learning_rate=np.float64(1e-4), b1=jnp.array(0.5, jnp.float32), eps=1)
        assert adamfx.hyperparams(new)["b1"].dtype == (jnp.float64 if x64 else jnp.float32)
    assert jax.tree.structure(new) == jax.tree.structure(state)
    for old_leaf, new_leaf in zip(jax.tree.leaves(state), jax.tree.leaves(new), strict=True):
        assert (old_leaf.dtype, old_leaf.shape) == (new_leaf.dtype, new_leaf.shape)


def test_set_hyperparams_inside_jit():
    """Traced values are accepted (a schedule computed in the step, e.g.)."""
    tx = adamfx.adam(1e-3)
    state = tx.init({"w": jnp.zeros(2)})
    new = jax.jit(lambda s, lr: adamfx.set_hyperparams(s, learning_rate=lr))(state, 0.25)
    assert float(new[-1].hyperparams["learning_rate"]) == 0.25


# -- value semantics ---------------------------------------------------------------------------


def test_equal_arguments_give_equal_optimizers_with_equal_hashes():
    pairs = [
        (adamfx.adam(1e-3), adamfx.adam(1e-3)),
        (
            adamfx.adamw(1e-3, weight_decay=0.1, convention="torch"),
            adamfx.adamw(1e-3, weight_decay=0.1, convention="torch"),
        ),
        (adamfx.adam(jnp.array(1e-3)), adamfx.adam(jnp.array(1e-3))),  # 0-d arrays are stored as Python numbers
        (adamfx.adam(np.array(0.5)), adamfx.adam(0.5)),  # a NumPy 0-d array is a number
        (adamfx.adam(np.float32(0.5)), adamfx.adam(0.5)),
        (
            adamfx.adam(weight_decay=1e-2, weight_decay_mask={"w": jnp.array(True), "b": np.bool_(False)}),
            adamfx.adam(weight_decay=1e-2, weight_decay_mask={"w": True, "b": False}),
        ),
    ]
    for a, b in pairs:
        assert a == b and hash(a) == hash(b)
    assert adamfx.adam(1e-3) != adamfx.adam(2e-3)
    assert adamfx.adam(jnp.array(0.5)) != adamfx.adam(0.5)  # a JAX array is injected (read at every step)
    assert adamfx.adam(1e-3) == adamfx.adam(1e-3, convention="torch")  # the same composition
    assert adamfx.adam(1e-3) != adamfx.adam(1e-3, convention="keras")


def test_recreated_optimizer_as_static_argument_does_not_retrace():
    traces = []
    step = static_tx_step(traces)
    params = {"w": jnp.ones(3)}
    with compiles() as counter:
        for _ in range(3):
            tx = adamfx.adam(1e-3, weight_decay=1e-2)  # a new object each time
            params, _ = step(tx, params, tx.init(params), params)
    assert len(traces) == 1 and counter.count == 1


def apply_fn(params, x):
    return x @ params["w"] + params["b"]


def loss(params, x):
    return jnp.mean(apply_fn(params, x) ** 2)


@pytest.mark.parametrize(
    "make_tx, expected_traces",
    [
        (lambda: adamfx.adamw(1e-3, weight_decay=1e-2), 1),
        (lambda: adamfx.multi_steps(adamfx.with_ema(adamfx.adam(1e-3)), 2), 1),
        (lambda: optax.adam(1e-3), 3),  # optax's closures compare by identity: the check can see retraces
    ],
)
def test_flax_train_state_does_not_retrace_when_the_optimizer_is_recreated(make_tx, expected_traces):
    traces = []

    @jax.jit
    def train_step(state, x):
        traces.append(1)
        return state.apply_gradients(grads=jax.grad(loss)(state.params, x))

    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    x = jnp.ones((4, 3))
    for _ in range(3):
        state = train_state.TrainState.create(apply_fn=apply_fn, params=params, tx=make_tx())
        state = train_step(state, x)
    assert len(traces) == expected_traces


def test_set_hyperparams_on_a_whole_train_state_without_retracing():
    traces = []

    @jax.jit
    def train_step(state, x):
        traces.append(1)
        return state.apply_gradients(grads=jax.grad(loss)(state.params, x))

    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    state = train_state.TrainState.create(apply_fn=apply_fn, params=params, tx=adamfx.adam(1e-3))
    state = train_step(state, jnp.ones((4, 3)))
    state = adamfx.set_hyperparams(state, learning_rate=1e-2)
    assert isinstance(state, train_state.TrainState)
    state = train_step(state, jnp.ones((4, 3)))
    assert float(adamfx.hyperparams(state)["learning_rate"]) == pytest.approx(1e-2)
    assert len(traces) == 1


class TinyModel(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
        return self.linear(x)


def test_nnx_optimizer_hyperparams_and_no_retrace():
    traces = []

    @nnx.jit
    def step(model, optimizer, x):
        traces.append(1)
        grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
        optimizer.update(model, grads)

    model = TinyModel(nnx.Rngs(0))
    x = jnp.ones((4, 3))
    optimizer = nnx.Optimizer(model, adamfx.adam(1e-3), wrt=nnx.Param)
    step(model, optimizer, x)
    structure = jax.tree.structure(optimizer.opt_state)
    optimizer.opt_state = adamfx.set_hyperparams(optimizer.opt_state, learning_rate=5e-2)
    assert jax.tree.structure(optimizer.opt_state) == structure  # nnx Variables kept
    step(model, optimizer, x)
    assert float(adamfx.hyperparams(optimizer.opt_state)["learning_rate"]) == pytest.approx(5e-2)
    step(model, nnx.Optimizer(model, adamfx.adam(1e-3), wrt=nnx.Param), x)  # re-created optimizer
    assert len(traces) == 1


# -- parameter groups and nesting ------------------------------------------------------------------


def labels(params):
    return {k: jax.tree.map(lambda _: k, v) for k, v in params.items()}


GROUP_PARAMS = {"body": {"w": jnp.ones((2, 2))}, "head": {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}}


def test_groups_are_addressed_by_label():
    tx = adamfx.partition({"body": adamfx.adamw(1e-3, weight_decay=0.1), "head": adamfx.adam(1e-2)}, labels)
    state = tx.init(GROUP_PARAMS)
    assert adamfx.groups(state) == ["body", "head"]
    with pytest.raises(ValueError, match="group"):
        adamfx.hyperparams(state)  # learning_rate differs by group: no silent pick
    assert float(adamfx.hyperparams(state, group="head")["learning_rate"]) == pytest.approx(1e-2)
    assert "weight_decay" not in adamfx.hyperparams(state, group="head")
    state = adamfx.set_hyperparams(state, learning_rate=0.5, group="body")
    _, state = tx.update(GROUP_PARAMS, state, GROUP_PARAMS)
    assert float(adamfx.hyperparams(state, group="body")["learning_rate"]) == 0.5
    assert float(adamfx.hyperparams(state, group="head")["learning_rate"]) == pytest.approx(1e-2)
    with pytest.raises(KeyError, match="weight_decay"):
        adamfx.set_hyperparams(state, weight_decay=0.2, group="head")
    with pytest.raises(KeyError, match="'body', 'head'"):
        adamfx.hyperparams(state, group="tail")


def test_group_learning_rate_scales_only_that_group():
    """With SGD-like steps of Adam at t = 1 (|update| = lr), each group moves by its own rate."""
    tx = adamfx.partition({"body": adamfx.adam(1e-2, eps=0.0), "head": adamfx.adam(1e-2, eps=0.0)}, labels)
    state = adamfx.set_hyperparams(tx.init(GROUP_PARAMS), learning_rate=0.25, group="head")
    updates, _ = tx.update(GROUP_PARAMS, state, GROUP_PARAMS)
    # m^ / sqrt(v^) = g / |g| up to float32 rounding of 1 - b^t (log1p/expm1): 2 ulp.
    ulp2 = 2 * float(jnp.finfo(jnp.float32).eps)
    np.testing.assert_allclose(updates["body"]["w"], -1e-2, rtol=ulp2)
    np.testing.assert_allclose(updates["head"]["w"], -0.25, rtol=ulp2)
    np.testing.assert_allclose(updates["head"]["b"], -0.25, rtol=ulp2)


def test_hyperparams_reach_through_wrappers():
    tx = adamfx.apply_if_finite(adamfx.multi_steps(adamfx.with_ema(adamfx.adam(1e-3), 0.9), 2))
    state = tx.init({"w": jnp.ones(2)})
    values = adamfx.hyperparams(state)
    assert {"ema_momentum", "learning_rate", "b1"} <= set(values)
    state = adamfx.set_hyperparams(state, learning_rate=1e-2, ema_momentum=0.5)
    assert float(state.inner_state.inner_opt_state.hyperparams["ema_momentum"]) == 0.5
    assert state.inner_state.inner_opt_state.inner_state[-1].hyperparams["learning_rate"] == np.float32(1e-2)
    with pytest.raises(ValueError, match="ema_momentum"):
        adamfx.set_hyperparams(state, ema_momentum=1.5)
    # and through optax's own wrappers
    optax_state = optax.MultiSteps(adamfx.adam(1e-3), 2).init({"w": jnp.ones(2)})
    changed = adamfx.set_hyperparams(optax_state, learning_rate=2e-3)
    assert changed.inner_opt_state[-1].hyperparams["learning_rate"] == np.float32(2e-3)


def test_hyperparams_right_after_set_hyperparams_shows_the_new_values():
    """Issue 10: it used to show the learning rate of the last step until the next one."""
    params = {"w": jnp.zeros(3)}
    tx = adamfx.adam(1e-3, decay=0.1)
    state = tx.init(params)
    _, state = tx.update({"w": jnp.ones(3)}, state, params)
    state = adamfx.set_hyperparams(state, learning_rate=3e-4, b1=0.8, decay=0.5)
    shown = adamfx.hyperparams(state)
    assert float(shown["learning_rate"]) == np.float32(3e-4)
    assert float(shown["decay"]) == 0.5
    assert float(shown["b1"]) == pytest.approx(0.8, rel=1e-7)


@pytest.mark.parametrize("value", [None, jnp.ones(3), "1e-3", 1 + 1j, 1e39, optax.constant_schedule(1e-3)])
def test_set_hyperparams_refuses_non_scalars_naming_the_name(value):
    state = adamfx.adam(1e-3).init({"w": jnp.zeros(2)})
    with pytest.raises(ValueError, match=r"learning_rate=.* is invalid"):
        adamfx.set_hyperparams(state, learning_rate=value)


EXPECTED_HYPERPARAMS = {
    "sgd": {"learning_rate", "decay", "momentum", "dampening"},
    "adagrad": {"learning_rate", "decay", "eps", "eps_root"},
    "rmsprop": {"learning_rate", "decay", "rho", "eps", "eps_root", "momentum", "dampening"},
    "adadelta": {"learning_rate", "decay", "rho", "eps", "eps_root"},
    "nadam": {"learning_rate", "decay", "b1", "b2", "eps", "eps_root", "momentum_decay"},
    "adamax": {"learning_rate", "decay", "b1", "b2", "eps"},
    "radam": {"learning_rate", "decay", "b1", "b2", "eps", "eps_root", "threshold"},
}


@pytest.mark.parametrize("name", EXPECTED_HYPERPARAMS)
def test_hyperparameters_live_in_the_state(name):
    tx = getattr(adamfx, name)(1e-2, convention="torch", **({"momentum": 0.9} if name in ("sgd", "rmsprop") else {}))
    assert set(adamfx.hyperparams(tx.init({"w": jnp.zeros(2)}))) == EXPECTED_HYPERPARAMS[name]


@pytest.mark.parametrize(
    ("name", "convention", "built", "changed"),
    [
        ("rmsprop", "keras", {"rho": 0.8, "momentum": 0.5, "centered": True}, {"rho": 0.9, "momentum": 0.7}),
        ("rmsprop", "torch", {"rho": 0.8, "momentum": 0.5}, {"rho": 0.95, "learning_rate": 0.02}),
        ("adadelta", "torch", {"rho": 0.8, "eps": 1e-4}, {"rho": 0.95, "eps": 1e-6}),
        ("sgd", "torch", {"momentum": 0.5, "dampening": 0.2}, {"momentum": 0.9, "dampening": 0.0}),
        ("sgd", "keras", {"momentum": 0.5, "weight_decay": 0.1}, {"momentum": 0.9, "learning_rate": 0.02}),
        ("nadam", "torch", {"momentum_decay": 0.1}, {"momentum_decay": 4e-3, "b1": 0.95}),
        ("radam", "optax", {"threshold": 6.0}, {"threshold": 5.0, "b2": 0.99}),
    ],
)
def test_set_hyperparams_equals_building_with_the_values(name, convention, built, changed):
    """Changing a hyperparameter in the state before step 1 gives the optimizer built with that value."""
    factory = getattr(adamfx, name)
    direct = {**built, **changed}
    problem = peers.make_problem()
    with jax.enable_x64(True):
        reference = peers.run_transform(
            factory(convention=convention, **{"learning_rate": 0.01, **direct}), problem, 50
        )
        tx = factory(0.01, convention=convention, **built)
        retuned = optax.GradientTransformation(lambda p: adamfx.set_hyperparams(tx.init(p), **changed), tx.update)
        actual = peers.run_transform(retuned, problem, 50)
    np.testing.assert_allclose(actual, reference, rtol=0, atol=1e-14)


def test_set_hyperparams_rejects_a_bad_rho():
    state = adamfx.rmsprop(1e-2).init({"w": jnp.zeros(2)})
    with pytest.raises(ValueError, match="rho"):
        adamfx.set_hyperparams(state, rho=1.5)


def test_changing_hyperparameters_does_not_recompile():
    tx = adamfx.rmsprop(1e-2, momentum=0.9, centered=True, convention="keras")
    params = {"w": jnp.ones(3)}
    step = jax.jit(tx.update)
    state = tx.init(params)
    _, state = step(params, state, params)
    for values in ({"rho": 0.5}, {"momentum": 0.1, "learning_rate": 0.5}, {"eps_root": 1e-3}):
        state = adamfx.set_hyperparams(state, **values)
        _, state = step(params, state, params)
    assert step._cache_size() == 1
