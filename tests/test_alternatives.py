"""Properties of Adam's relatives (sgd ... radam) that the live-peer parity suite does not cover.

Convergence on a parabola and on Rosenbrock, dtype preservation, rejection of
bad hyperparameters, hyperparameters living in the state, and the convention
differences that only show at a boundary (Keras's learning rate inside the
momentum buffer, RAdam's ``>`` vs ``>=`` threshold).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamfx
from adamfx._src.stages.corrections import sma_lengths
from tests import peers

OPTIMIZERS = ("sgd", "adagrad", "rmsprop", "adadelta", "nadam", "nadamw", "adamax", "radam")
CONVENTIONS = ("optax", "torch", "keras")


def minimize(tx, loss, x0, steps):
    """``steps`` jitted steps of ``tx`` on ``loss`` from ``x0`` (one ``lax.scan``)."""

    @jax.jit
    def run(x):
        def body(carry, _):
            x, state = carry
            updates, state = tx.update(jax.grad(loss)(x), state, x)
            return (optax.apply_updates(x, updates), state), None

        (x, _), _ = jax.lax.scan(body, (x, tx.init(x)), None, length=steps)
        return x

    return run(x0)


CENTRE = jnp.array([1.0, -2.0, 3.0])


def parabola(x):
    return jnp.sum((x - CENTRE) ** 2)


def rosenbrock(x):
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


# optimizer -> (kwargs, steps) that reach the minimum; the learning rate is tuned, the rest is the convention's.
PARABOLA = {
    "sgd": ({"learning_rate": 0.1, "momentum": 0.5}, 200),
    "adagrad": ({"learning_rate": 0.5}, 500),
    "rmsprop": ({"learning_rate": optax.exponential_decay(0.05, 100, 0.5)}, 1500),
    "adadelta": ({"learning_rate": 10.0}, 1000),
    "nadam": ({"learning_rate": 0.05}, 1000),
    "nadamw": ({"learning_rate": 0.05, "weight_decay": 0.0}, 1000),
    "adamax": ({"learning_rate": 0.05}, 1000),
    "radam": ({"learning_rate": 0.05}, 1000),
}
ROSENBROCK = {
    "sgd": ({"learning_rate": 1e-3, "momentum": 0.9}, 5000),
    "adagrad": ({"learning_rate": 0.5}, 5000),
    "rmsprop": ({"learning_rate": optax.exponential_decay(3e-3, 1000, 0.5)}, 5000),
    "adadelta": ({"learning_rate": optax.exponential_decay(1.0, 5000, 0.5)}, 50000),  # wanders at a constant lr
    "nadam": ({"learning_rate": 1e-2}, 5000),
    "nadamw": ({"learning_rate": 1e-2, "weight_decay": 0.0}, 5000),
    "adamax": ({"learning_rate": 2e-2}, 5000),
    "radam": ({"learning_rate": 3e-3}, 20000),  # its first steps are plain momentum SGD: lr 1e-2 x |g| ~ 200 diverges
}


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_converges_on_a_parabola(name, convention):
    kwargs, steps = PARABOLA[name]
    x = minimize(getattr(adamfx, name)(convention=convention, **kwargs), parabola, jnp.zeros(3), steps)
    np.testing.assert_allclose(x, CENTRE, atol=1e-2)


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_converges_on_rosenbrock(name, convention):
    kwargs, steps = ROSENBROCK[name]
    x = minimize(getattr(adamfx, name)(convention=convention, **kwargs), rosenbrock, jnp.array([-1.2, 1.0]), steps)
    np.testing.assert_allclose(x, [1.0, 1.0], atol=5e-2)


# Every optional state path on: momentum buffers, centering, Nesterov.
FULL = {
    "sgd": {"momentum": 0.9, "nesterov": True},
    "rmsprop": {"momentum": 0.9, "centered": True},
    "radam": {"nesterov": True},
}


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32, jnp.float64, jnp.complex64])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_preserves_dtypes(name, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        params = {"w": jnp.linspace(-1, 1, 6, dtype=dtype).reshape(2, 3), "b": jnp.ones(3, dtype)}
        tx = getattr(adamfx, name)(1e-2, weight_decay=1e-3, **FULL.get(name, {}))
        state = tx.init(params)
        step = jax.jit(tx.update)
        for _ in range(3):
            updates, state = step(params, state, params)
            params = optax.apply_updates(params, updates)
        for leaf in jax.tree.leaves(updates):
            assert leaf.dtype == dtype
            assert bool(jnp.all(jnp.isfinite(leaf)))
        assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(params))
        # moments like the params (second moments real; float32 for float16 params, issue 10), counters int
        kept = jnp.float32 if dtype == jnp.float16 else dtype
        for leaf in jax.tree.leaves(state):
            assert leaf.dtype in (kept, jnp.finfo(kept).dtype, jnp.int32) or leaf.ndim == 0


BF16 = jnp.bfloat16
STORAGE = {
    "sgd": {"momentum": 0.9, "mu_dtype": BF16},
    "adagrad": {"nu_dtype": BF16},
    "rmsprop": {"momentum": 0.9, "centered": True, "mu_dtype": BF16, "nu_dtype": BF16},
    "adadelta": {"nu_dtype": BF16},
    "nadam": {"mu_dtype": BF16, "nu_dtype": BF16},
    "adamax": {"mu_dtype": BF16, "nu_dtype": BF16},
    "radam": {"mu_dtype": BF16, "nu_dtype": BF16},
}


@pytest.mark.parametrize("name", STORAGE)
def test_state_storage_dtype(name):
    """``mu_dtype``/``nu_dtype`` reach every stored buffer; the maths and the updates stay float32."""
    params = {"w": jnp.ones(4)}
    tx = getattr(adamfx, name)(1e-2, **STORAGE[name])
    state = tx.init(params)
    stored = [leaf for leaf in jax.tree.leaves(state) if leaf.ndim == 1]
    assert stored and all(leaf.dtype == BF16 for leaf in stored)
    updates, state = jax.jit(tx.update)(params, state, params)
    assert updates["w"].dtype == jnp.float32
    assert all(leaf.dtype == BF16 for leaf in jax.tree.leaves(state) if leaf.ndim == 1)


BAD = [
    ("sgd", {"learning_rate": -1.0}, "learning_rate"),
    ("sgd", {"momentum": -0.1}, "momentum"),
    ("sgd", {"momentum": 1.5}, "momentum"),
    ("sgd", {"momentum": 0.9, "dampening": 2.0}, "dampening"),
    ("sgd", {"nesterov": True, "convention": "torch"}, "nesterov"),  # keras, optax: plain SGD
    ("sgd", {"momentum": 0.9, "dampening": 0.1, "nesterov": True}, "nesterov"),
    ("sgd", {"convention": "pytorch"}, "convention"),
    ("sgd", {"weight_decay": -1e-3}, "weight_decay"),
    ("sgd", {"decay": -1.0}, "decay"),
    ("adagrad", {"lr_decay": -0.1}, "lr_decay"),
    ("adagrad", {"lr_decay": 0.1, "decay": 0.1}, "lr_decay"),
    ("adagrad", {"initial_accumulator_value": -1.0}, "initial_accumulator_value"),
    ("adagrad", {"eps": -1e-8, "convention": "keras"}, "eps"),
    ("rmsprop", {"rho": 1.0}, "rho"),
    ("rmsprop", {"rho": -0.5}, "rho"),
    ("rmsprop", {"eps": -1.0}, "eps"),
    ("rmsprop", {"momentum": 2.0}, "momentum"),
    ("adadelta", {"rho": 1.5}, "rho"),
    ("adadelta", {"eps": -1.0}, "eps"),
    ("nadam", {"b1": 1.0}, "b1"),
    ("nadam", {"b2": -0.1}, "b2"),
    ("nadam", {"momentum_decay": -1.0}, "momentum_decay"),
    ("nadamw", {"weight_decay": -1.0}, "weight_decay"),
    ("adamax", {"b2": 1.0}, "b2"),
    ("adamax", {"eps": -1.0}, "eps"),
    ("radam", {"threshold": 3.0}, "threshold"),
    ("radam", {"eps": -1.0}, "eps"),
    ("radam", {"convention": "flax"}, "convention"),
]


@pytest.mark.parametrize(("name", "kwargs", "argument"), BAD, ids=[f"{n}-{a}" for n, _, a in BAD])
def test_rejects_bad_hyperparameters(name, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        getattr(adamfx, name)(**kwargs)


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


@pytest.mark.parametrize("name", ["sgd", "rmsprop"])
def test_keras_keeps_the_learning_rate_inside_the_momentum_buffer(name):
    """Same trajectory as PyTorch's while lr is constant (given the same eps and rho); not once it changes."""
    problem = peers.make_problem()
    shared = {"momentum": 0.9, **({"rho": 0.9, "eps": 0.0} if name == "rmsprop" else {})}

    def run(convention, learning_rate):
        with jax.enable_x64(True):
            tx = getattr(adamfx, name)(learning_rate, convention=convention, **shared)
            return peers.run_transform(tx, problem, 100)

    schedule = lambda count: 0.01 * 0.9**count
    assert peers.max_abs_diff(run("keras", 0.01), run("torch", 0.01)) < 1e-12
    assert peers.max_abs_diff(run("keras", schedule), run("torch", schedule)) > 1e-3


def test_radam_threshold_boundary():
    """At rho_t == threshold "optax" rectifies (>=) and "torch" does not (>); with eps 0 they are otherwise equal."""
    b2, step = 0.9, 6
    with jax.enable_x64(True):
        _, rho = sma_lengths(jnp.asarray(1 - b2), jnp.asarray(step, jnp.int32))
    threshold = float(rho)  # rho_5 < threshold == rho_6 < rho_7
    problem = peers.make_problem()

    def run(convention, threshold):
        with jax.enable_x64(True):
            tx = adamfx.radam(0.01, b2=b2, eps=0.0, threshold=threshold, convention=convention)
            return peers.run_transform(tx, problem, 10)

    inclusive, strict = run("optax", threshold), run("torch", threshold)
    assert peers.max_abs_diff(inclusive[: step - 1], strict[: step - 1]) < 1e-12  # neither rectifies before
    assert peers.max_abs_diff(inclusive[step - 1], strict[step - 1]) > 1e-4  # only >= rectifies at rho_t == threshold
    assert peers.max_abs_diff(inclusive, run("torch", np.nextafter(threshold, 0))) < 1e-12  # strict, just below
    live = peers.run_transform(optax.radam(0.01, b2=b2, eps=0.0, threshold=np.nextafter(threshold, 0)), problem, 10)
    assert peers.max_abs_diff(inclusive, live) <= 1e-12


def test_optax_adadelta_default_learning_rate_climbs():
    """Why adamfx does not copy optax.adadelta's default ``learning_rate=None``: it steps up the gradient."""
    params = jnp.ones(2)
    updates, _ = optax.adadelta().update(2 * params, optax.adadelta().init(params), params)
    assert bool(jnp.all(updates > 0))
    ours, _ = adamfx.adadelta().update(2 * params, adamfx.adadelta().init(params), params)
    assert bool(jnp.all(ours < 0))
