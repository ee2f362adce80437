"""Training-loop wrappers (issue 6, item 3): accumulation, non-finite steps, EMA, parameter groups.

References: NumPy Adam (Kingma & Ba, 2015, Alg. 1) on the mean gradient or on the
finite steps only; live Keras 3 (``use_ema``, ``ema_momentum``,
``ema_overwrite_frequency``); live ``torch.optim`` with parameter groups; optax's
own ``masked``/``partition`` around optax's Adam.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamfx
from tests import peers
from tests.compile_count import static_tx_step


def numpy_adam_step(p, m, v, g, t, lr, b1=0.9, b2=0.999, eps=1e-8):
    for k in p:
        m[k] = b1 * m[k] + (1 - b1) * g[k]
        v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
        p[k] = p[k] - lr * (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)


def jitted_step(tx):
    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def as_jax(tree):
    return {k: jnp.asarray(v) for k, v in tree.items()}


def bits(tree):
    return [np.asarray(leaf).tobytes() for leaf in jax.tree.leaves(tree)]


# -- gradient accumulation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wrap", [adamfx.multi_steps, lambda tx, k: optax.MultiSteps(tx, k, accumulator_dtype=jnp.float64)]
)
def test_accumulation_applies_the_mean_gradient_once_per_k(wrap):
    problem, k, macro_steps, lr = peers.make_problem(), 3, 5, 1e-2
    # NumPy reference: one Adam step per k micro-batches, on their mean gradient.
    p = problem.params_in(np.float64)
    m, v = ({key: np.zeros_like(x) for key, x in p.items()} for _ in range(2))
    reference = []
    for t in range(1, macro_steps + 1):
        micro = [problem.grad(p, k * (t - 1) + j) for j in range(k)]
        numpy_adam_step(p, m, v, {key: sum(g[key] for g in micro) / k for key in p}, t, lr)
        reference.append(peers.flatten(p))

    with jax.enable_x64(True):
        tx = wrap(adamfx.adam(lr), k)
        step = jitted_step(tx)
        params = as_jax(problem.params_in(np.float64))
        state = tx.init(params)
        got = []
        for i in range(k * macro_steps):
            before_params, before_inner = bits(params), bits(state.inner_opt_state)
            params, state = step(params, state, as_jax(problem.grad(params, i)))
            if (i + 1) % k:  # a micro-step: nothing moves but the accumulator
                assert bits(params) == before_params
                assert bits(state.inner_opt_state) == before_inner
            else:
                got.append(peers.flatten(params))
        assert int(state.inner_opt_state[0].count) == macro_steps  # the inner state advanced once per k
        assert int(state.gradient_step) == macro_steps
        assert state.acc_grads["w"].dtype == jnp.float64
    np.testing.assert_allclose(np.stack(got), np.stack(reference), rtol=1e-12, atol=1e-14)


def test_accumulator_is_float32_for_low_precision_params():
    state = adamfx.multi_steps(adamfx.adam(), 2).init({"w": jnp.zeros(3, jnp.bfloat16)})
    assert state.acc_grads["w"].dtype == jnp.float32


# -- non-finite steps ------------------------------------------------------------------------------


BAD_STEPS = {2: np.nan, 5: np.inf, 6: -np.inf}


@pytest.mark.parametrize("wrap", [adamfx.apply_if_finite, lambda tx: optax.apply_if_finite(tx, 10)])
def test_non_finite_steps_leave_params_and_state_exactly_as_they_were(wrap):
    problem, steps, lr = peers.make_problem(), 10, 1e-2
    # NumPy reference: Adam over the finite steps only (the skipped ones do not count as steps).
    p = problem.params_in(np.float64)
    m, v = ({key: np.zeros_like(x) for key, x in p.items()} for _ in range(2))
    reference, t = [], 0
    for i in range(steps):
        if i not in BAD_STEPS:
            t += 1
            numpy_adam_step(p, m, v, problem.grad(p, i), t, lr)
        reference.append(peers.flatten(p))

    with jax.enable_x64(True):
        tx = wrap(adamfx.adam(lr))
        step = jitted_step(tx)
        params = as_jax(problem.params_in(np.float64))
        state = tx.init(params)
        got = []
        for i in range(steps):
            grads = problem.grad(params, i)
            if i in BAD_STEPS:
                grads["w"][1, 2] = BAD_STEPS[i]
            before = bits((params, state.inner_state))
            params, state = step(params, state, as_jax(grads))
            if i in BAD_STEPS:
                assert bits((params, state.inner_state)) == before
                assert not bool(state.last_finite)
            got.append(peers.flatten(params))
        assert int(state.total_notfinite) == len(BAD_STEPS)
        assert int(state.notfinite_count) == 0  # consecutive count, reset by the finite steps after 6
    np.testing.assert_allclose(np.stack(got), np.stack(reference), rtol=1e-12, atol=1e-14)


def test_apply_if_finite_never_gives_up_by_default_and_counts():
    tx = adamfx.apply_if_finite(adamfx.adam(1e-2))
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    for _ in range(5):
        updates, state = tx.update({"w": jnp.array([jnp.nan, 1.0])}, state, params)
        assert updates["w"].tolist() == [0.0, 0.0]
    assert (int(state.notfinite_count), int(state.total_notfinite)) == (5, 5)
    with pytest.raises(ValueError, match="max_consecutive_errors"):
        adamfx.apply_if_finite(adamfx.adam(), -1)


# -- exponential moving average (Keras use_ema) ----------------------------------------------------


@pytest.mark.parametrize("overwrite", [None, 1, 3])
def test_ema_matches_keras_use_ema(overwrite):
    problem, steps, lr, momentum = peers.make_problem(), 12, 5e-2, 0.8
    keras_kwargs = {"learning_rate": lr, "use_ema": True, "ema_momentum": momentum}
    keras_kwargs["ema_overwrite_frequency"] = overwrite
    keras_traj = peers.run_keras("Adam", keras_kwargs, problem, steps)
    tx = adamfx.with_ema(adamfx.adam(lr, convention="keras"), ema_momentum=momentum, ema_overwrite_frequency=overwrite)
    ours = peers.run_transform(tx, problem, steps)
    # p + (ema - p) may differ from ema by one rounding on overwrite steps.
    np.testing.assert_allclose(ours, keras_traj, rtol=1e-13, atol=1e-15)
    if overwrite is None:  # the params are untouched: the plain optimizer's trajectory, bit for bit
        plain = peers.run_transform(adamfx.adam(lr, convention="keras"), problem, steps)
        np.testing.assert_array_equal(ours, plain)


def test_ema_values_match_keras_moving_average_variables():
    """Reads Keras' own average variables (no overwrite) and compares them with ema_params."""
    import keras

    problem, steps, lr, momentum = peers.make_problem(), 7, 5e-2, 0.9
    with peers.precision(np.float64, keras_floatx=True):
        keys = sorted(problem.init_params)
        init = problem.params_in(np.float64)
        variables = [keras.Variable(init[k], dtype="float64", name=k) for k in keys]
        opt = keras.optimizers.Adam(learning_rate=lr, use_ema=True, ema_momentum=momentum)
        opt.build(variables)
        for i in range(steps):
            grads = problem.grad({k: v.numpy() for k, v in zip(keys, variables, strict=True)}, i)
            opt.apply([grads[k] for k in keys], variables)
        keras_average = {
            k: np.asarray(a.numpy()) for k, a in zip(keys, opt._model_variables_moving_average, strict=True)
        }

        tx = adamfx.with_ema(adamfx.adam(lr, convention="keras"), ema_momentum=momentum)
        step = jitted_step(tx)
        params = as_jax(problem.params_in(np.float64))
        state = tx.init(params)
        for i in range(steps):
            params, state = step(params, state, as_jax(problem.grad(params, i)))
        ours = adamfx.ema_params(state)
    np.testing.assert_allclose(peers.flatten(ours), peers.flatten(keras_average), rtol=1e-13, atol=1e-15)


def test_ema_validation_and_missing_ema():
    with pytest.raises(ValueError, match="ema_momentum"):
        adamfx.with_ema(adamfx.adam(), ema_momentum=1.5)
    with pytest.raises(ValueError, match="ema_overwrite_frequency"):
        adamfx.with_ema(adamfx.adam(), ema_overwrite_frequency=0)
    with pytest.raises(ValueError, match="with_ema"):
        adamfx.ema_params(adamfx.adam().init({"w": jnp.zeros(2)}))
    with pytest.raises(ValueError, match="params"):
        tx = adamfx.with_ema(adamfx.adam())
        tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.zeros(2)}))


# -- parameter groups --------------------------------------------------------------------------------


def run_torch_groups(problem, steps, groups, optimizer="AdamW"):
    """torch.optim.<optimizer> with parameter groups ``[(keys, options), ...]``; returns the trajectory."""
    import torch

    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in problem.params_in(np.float64).items()}
    opt = getattr(torch.optim, optimizer)([{"params": [tensors[k] for k in keys], **kw} for keys, kw in groups])
    rows = []
    for i in range(steps):
        grads = problem.grad({k: t.detach().numpy() for k, t in tensors.items()}, i)
        for k, t in tensors.items():
            t.grad = torch.from_numpy(grads[k])
        opt.step()
        rows.append(peers.flatten({k: t.detach().numpy() for k, t in tensors.items()}))
    return np.stack(rows)


def test_weight_decay_mask_excludes_bias_and_norm_like_torch_param_groups():
    """Problem leaves: w (3, 4) is decayed; b (4,) and s () are not."""
    problem, steps = peers.make_problem(), 15
    torch_traj = run_torch_groups(
        problem,
        steps,
        [(["w"], {"lr": 1e-2, "weight_decay": 0.3}), (["b", "s"], {"lr": 1e-2, "weight_decay": 0.0})],
        "AdamW",
    )
    tx = adamfx.adamw(1e-2, weight_decay=0.3, weight_decay_mask=adamfx.exclude_bias_and_norm, convention="torch")
    np.testing.assert_allclose(peers.run_transform(tx, problem, steps), torch_traj, rtol=1e-12, atol=1e-14)
    unmasked = adamfx.adamw(1e-2, weight_decay=0.3, convention="torch")
    assert not np.allclose(peers.run_transform(unmasked, problem, steps), torch_traj, rtol=1e-6)


def group_of(params):
    return {k: ("matrix" if k == "w" else "vector") for k in params}


@pytest.mark.parametrize("make", [adamfx.partition, optax.partition])
def test_learning_rate_per_group_like_torch_param_groups(make):
    problem, steps = peers.make_problem(), 15
    torch_traj = run_torch_groups(problem, steps, [(["w"], {"lr": 3e-2}), (["b", "s"], {"lr": 1e-3})], "Adam")
    tx = make(
        {"matrix": adamfx.adam(3e-2, convention="torch"), "vector": adamfx.adam(1e-3, convention="torch")}, group_of
    )
    np.testing.assert_allclose(peers.run_transform(tx, problem, steps), torch_traj, rtol=1e-12, atol=1e-14)


def test_group_learning_rate_set_mid_training_like_torch_param_group_lr():
    """torch: opt.param_groups[i]["lr"] = ...; adamfx: set_hyperparams(state, learning_rate=..., group=...)."""
    import torch

    problem, steps, switch = peers.make_problem(), 12, 6
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in problem.params_in(np.float64).items()}
    opt = torch.optim.Adam(
        [{"params": [tensors["w"]], "lr": 1e-2}, {"params": [tensors["b"], tensors["s"]], "lr": 1e-2}]
    )
    tx = adamfx.partition({"matrix": adamfx.adam(1e-2), "vector": adamfx.adam(1e-2)}, group_of)
    with jax.enable_x64(True):
        step = jitted_step(tx)
        params = as_jax(problem.params_in(np.float64))
        state = tx.init(params)
        for i in range(steps):
            if i == switch:
                opt.param_groups[1]["lr"] = 1e-1
                state = adamfx.set_hyperparams(state, learning_rate=1e-1, group="vector")
            grads = problem.grad({k: t.detach().numpy() for k, t in tensors.items()}, i)
            for k, t in tensors.items():
                t.grad = torch.from_numpy(grads[k])
            opt.step()
            params, state = step(params, state, as_jax(problem.grad(params, i)))
    torch_params = {k: t.detach().numpy() for k, t in tensors.items()}
    np.testing.assert_allclose(peers.flatten(params), peers.flatten(torch_params), rtol=1e-12, atol=1e-14)


def test_different_optimizers_per_group_and_masked_match_optax():
    """adamfx.partition / adamfx.masked around adamfx.adam equal optax's wrappers around optax.adam."""
    problem, steps = peers.make_problem(), 10
    ours = adamfx.partition({"matrix": adamfx.adam(1e-2), "vector": optax.sgd(1e-2, momentum=0.9)}, group_of)
    theirs = optax.partition({"matrix": optax.adam(1e-2), "vector": optax.sgd(1e-2, momentum=0.9)}, group_of)
    np.testing.assert_allclose(
        peers.run_transform(ours, problem, steps), peers.run_transform(theirs, problem, steps), rtol=1e-13, atol=1e-15
    )
    mask = {"w": True, "b": False, "s": True}
    np.testing.assert_allclose(
        peers.run_transform(adamfx.masked(adamfx.adam(1e-2), mask), problem, steps),
        peers.run_transform(optax.masked(optax.adam(1e-2), mask), problem, steps),
        rtol=1e-13,
        atol=1e-15,
    )


def test_weight_decay_mask_callable_works_inside_a_group():
    params = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}, "head": {"kernel": jnp.ones((3, 1))}}
    labels = {"dense": {"kernel": "body", "bias": "body"}, "head": {"kernel": "head"}}
    body = adamfx.adamw(0.0, weight_decay=0.5, weight_decay_mask=adamfx.exclude_bias_and_norm)
    tx = adamfx.partition({"body": body, "head": adamfx.adam(1e-3)}, labels)
    state = tx.init(params)
    state = adamfx.set_hyperparams(state, learning_rate=1.0, group="body")
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, state, params)  # zero gradients: only the decay moves the body
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.5)
    np.testing.assert_allclose(updates["dense"]["bias"], 0.0)


# -- value semantics of the wrappers ----------------------------------------------------------------


WRAPPERS = [
    lambda: adamfx.multi_steps(adamfx.adam(1e-3), 4),
    lambda: adamfx.apply_if_finite(adamfx.adam(1e-3), 3),
    lambda: adamfx.with_ema(adamfx.adam(1e-3), 0.999, 10),
    lambda: adamfx.partition({"matrix": adamfx.adam(1e-3), "vector": adamfx.adamw(1e-3)}, group_of),
    lambda: adamfx.partition(
        {"matrix": adamfx.adam(1e-3), "vector": adamfx.adam(1e-2)}, {"w": "matrix", "b": "vector"}
    ),
    lambda: adamfx.masked(adamfx.adam(1e-3), {"w": True, "b": False}),
    lambda: adamfx.masked(adamfx.adam(1e-3), adamfx.exclude_bias_and_norm),
    lambda: adamfx.apply_if_finite(adamfx.multi_steps(adamfx.with_ema(adamfx.adamw(1e-3)), 2)),
]


@pytest.mark.parametrize("make", WRAPPERS)
def test_wrappers_compare_by_value_and_do_not_retrace(make):
    assert make() == make() and hash(make()) == hash(make())
    traces = []
    step = static_tx_step(traces)
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    for _ in range(2):
        tx = make()
        step(tx, params, tx.init(params), params)
    assert len(traces) == 1


def test_wrappers_with_different_arguments_differ():
    assert adamfx.multi_steps(adamfx.adam(), 4) != adamfx.multi_steps(adamfx.adam(), 2)
    assert adamfx.with_ema(adamfx.adam(), 0.9) != adamfx.with_ema(adamfx.adam(), 0.99)
    assert adamfx.masked(adamfx.adam(), {"w": True}) != adamfx.masked(adamfx.adam(), {"w": False})
    assert adamfx.partition({"a": adamfx.adam()}, {"w": "a"}) != adamfx.partition({"a": adamfx.adamw()}, {"w": "a"})


def test_wrapper_validation():
    with pytest.raises(ValueError, match="every_k_schedule"):
        adamfx.multi_steps(adamfx.adam(), 0)
    with pytest.raises(ValueError, match="transforms"):
        adamfx.partition({}, {"w": "a"})
