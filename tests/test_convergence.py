"""Convergence: every optimizer reaches the minimum of a parabola and of Rosenbrock's function.

The learning rates are tuned per optimizer, the rest is each convention's default. (Agreement with
the peers step for step is the parity suite's, test_parity_<family>.py.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamfx

OPTIMIZERS = ("sgd", "adagrad", "rmsprop", "adadelta", "nadam", "nadamw", "adamax", "radam")
CONVENTIONS = ("optax", "torch", "keras")
ADAM_FAMILY = {
    "adam": lambda conv: adamfx.adam(0.05, convention=conv),
    "adamw": lambda conv: adamfx.adamw(0.05, weight_decay=1e-3, convention=conv),
    "amsgrad": lambda conv: adamfx.amsgrad(0.05, convention=conv),
    "adam+decay": lambda conv: adamfx.adam(0.05, decay=1e-3, convention=conv),
}


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


def parabola_of_a_tree(p):
    return jnp.sum((p["x"] - 3.0) ** 2) + jnp.sum((p["y"] + 1.0) ** 2)


def rosenbrock_of_a_tree(p):
    x, y = p["xy"][0], p["xy"][1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


@pytest.mark.parametrize("conv", CONVENTIONS)
@pytest.mark.parametrize("name", ADAM_FAMILY)
def test_adam_family_converges_on_a_parabola(name, conv):
    params = {"x": jnp.zeros(3), "y": jnp.zeros((2, 2))}
    final = minimize(ADAM_FAMILY[name](conv), parabola_of_a_tree, params, 600)
    assert float(parabola_of_a_tree(final)) < 1e-3


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_adam_converges_on_rosenbrock(conv):
    params = {"xy": jnp.array([-1.2, 1.0])}
    final = minimize(adamfx.adam(0.02, convention=conv), rosenbrock_of_a_tree, params, 4000)
    np.testing.assert_allclose(np.asarray(final["xy"]), [1.0, 1.0], atol=2e-2)


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
