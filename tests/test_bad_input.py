"""Every hyperparameter of every optimizer through every kind of bad value (issue 10).

The optimizers and their valid values come from ``tests/registry.py``, the
allowed ranges from ``registry.RANGES`` (written from the peers' docs, not from
adamfx's table). Each bad value must be refused with a ``ValueError`` naming
the argument -- at construction, through ``set_hyperparams`` and through
``restore_state`` alike -- and each valid edge value accepted. No jit: these
are construction-time checks.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamfx
from tests import registry

PAIRS = registry.entry_hyperparams()
IDS = [f"{entry.id}-{name}" for entry, name in PAIRS]


def bad_values(name: str) -> dict[str, object]:
    """The kinds of bad value for hyperparameter ``name``, by kind."""
    allowed = registry.RANGES[name]
    values = {
        "nan": math.nan,
        "inf": math.inf,
        "-inf": -math.inf,
        "below range": allowed.below(),
        "complex": 0.5 + 1j,
        "string": "0.5",
        "bool": True,
        "shape (3,)": np.full(3, 0.5),
        "jax shape (3,)": jnp.full(3, 0.5),
        "None": None,
        "float32 overflow": 1e39,  # finite in Python, inf in the state
        "float32 underflow": 1e-50,  # nonzero in Python, 0 in the state
        "bool array": np.array(True),
    }
    above = allowed.above()
    if above is not None:
        values["above range"] = above
        values.pop("float32 overflow")  # out of range already
    return values


def numeric_bad_values(name: str) -> dict[str, float]:
    """The bad values a float32 checkpoint can hold."""
    kinds = ("nan", "inf", "-inf", "below range", "above range")
    return {kind: value for kind, value in bad_values(name).items() if kind in kinds}


def refused(name: str, value: object) -> str:
    """The message pattern of a refusal: it names the argument and the value."""
    shown = re.escape(repr(value)) if not isinstance(value, (np.ndarray, jax.Array)) else ".*"
    return rf"{name}={shown} is invalid: "


@pytest.mark.parametrize(("entry", "name"), PAIRS, ids=IDS)
def test_construction_refuses_every_bad_value_naming_the_argument(entry, name):
    for kind, value in bad_values(name).items():
        if value is None and entry.accepts_none(name):
            continue  # None takes the convention's default or switches the option off
        with pytest.raises(ValueError, match=refused(name, value)):
            entry.build(**{name: value})
            pytest.fail(f"{entry.id}({name}={value!r}) [{kind}] was accepted")


@pytest.mark.parametrize(("entry", "name"), PAIRS, ids=IDS)
def test_construction_accepts_the_edges_of_the_range(entry, name):
    allowed = registry.RANGES[name]
    edges = [allowed.low, np.float32(entry.hyperparams[name]), np.array(entry.hyperparams[name])]
    if allowed.high_inclusive:
        edges.append(allowed.high)
    for value in edges:
        if name in ("lr_decay", "decay") and value and entry.factory is adamfx.adagrad:
            continue  # adagrad takes one of the two inverse-time decays (the other is 0 in the registry)
        entry.build(**{name: value})


def _state(entry):
    return entry.build().init(registry.params())


def _settable(entry):
    state = _state(entry)
    return state, sorted(set(adamfx.hyperparams(state)) & set(registry.RANGES))


SETTABLE = [(entry, name) for entry in registry.OPTIMIZERS for name in _settable(entry)[1]]
SETTABLE_IDS = [f"{entry.id}-{name}" for entry, name in SETTABLE]


def test_every_optimizer_has_settable_hyperparameters_in_the_registry():
    names = {entry.id: _settable(entry)[1] for entry in registry.OPTIMIZERS}
    assert all(len(found) >= 3 for found in names.values()), names


@pytest.mark.parametrize(("entry", "name"), SETTABLE, ids=SETTABLE_IDS)
def test_set_hyperparams_refuses_what_construction_refuses(entry, name):
    state = _state(entry)
    for kind, value in bad_values(name).items():
        with pytest.raises(ValueError, match=refused(name, value)):
            adamfx.set_hyperparams(state, **{name: value})
            pytest.fail(f"set_hyperparams({name}={value!r}) [{kind}] was accepted for {entry.id}")
    new = adamfx.set_hyperparams(state, **{name: registry.RANGES[name].low})
    assert float(adamfx.hyperparams(new)[name]) == registry.RANGES[name].low  # hyperparams shows what was set


def _with_stored(state, name: str, value: float):
    """``state`` with hyperparameter ``name`` stored as ``value`` (written as a checkpoint would hold it)."""

    def replace(path, leaf):
        key = getattr(path[-1], "key", None)
        if len(path) >= 2 and getattr(path[-2], "name", None) == "hyperparams" and key in (name, "1-" + name):
            stored = value if key == name else 1 - value
            return jnp.asarray(stored, dtype=leaf.dtype)
        return leaf

    return jax.tree_util.tree_map_with_path(replace, state)


@pytest.mark.parametrize(("entry", "name"), SETTABLE, ids=SETTABLE_IDS)
def test_restore_state_refuses_a_checkpoint_with_a_bad_value(entry, name):
    tx, params = entry.build(), registry.params()
    state = tx.init(params)
    adamfx.restore_state(tx, params, state)  # the valid checkpoint restores
    for kind, value in numeric_bad_values(name).items():
        bad = _with_stored(state, name, value)
        assert not jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), bad, state))
        with pytest.raises(ValueError, match=rf"checkpoint holds an invalid hyperparameter.*{name}="):
            adamfx.restore_state(tx, params, bad)
            pytest.fail(f"restore_state accepted {name}={value!r} [{kind}] for {entry.id}")


def test_a_checkpoint_holding_b1_2_or_a_negative_learning_rate_is_refused():
    tx, params = adamfx.adam(1e-3), registry.params()
    state = tx.init(params)
    for name, value in (("b1", 2.0), ("learning_rate", -1.0)):
        with pytest.raises(ValueError, match=rf"{name}={value!r} is invalid"):
            adamfx.restore_state(tx, params, _with_stored(state, name, value))


def test_radam_threshold_is_judged_the_same_at_construction_and_in_set_hyperparams():
    with pytest.raises(ValueError, match=r"threshold=2.0 is invalid: .*\[4.0, inf\)"):
        adamfx.radam(threshold=2.0)
    state = adamfx.radam(threshold=5.0).init(registry.params())
    with pytest.raises(ValueError, match=r"threshold=2.0 is invalid: .*\[4.0, inf\)"):
        adamfx.set_hyperparams(state, threshold=2.0)


def test_dataclasses_replace_cannot_bypass_the_checks():
    import dataclasses

    stage = adamfx._src.core.base.stage_of(adamfx.normalize(1e-8))
    with pytest.raises(ValueError, match=r"eps=-1.0 is invalid"):
        dataclasses.replace(stage, eps=-1.0)


def test_adam_refuses_b1_none_instead_of_dropping_the_first_moment():
    for name in ("b1", "b2"):
        with pytest.raises(ValueError, match=rf"{name}=None is invalid: adam\(\) needs {name}"):
            adamfx.adam(**{name: None})


def test_a_numpy_bool_array_mask_compares_by_value_and_decays_elementwise():
    """It used to be stored as the array, so ``==`` between two optimizers raised."""
    a = adamfx.adamw(0.1, weight_decay=0.5, weight_decay_mask=np.array([True, False]))
    b = adamfx.adamw(0.1, weight_decay=0.5, weight_decay_mask=jnp.array([True, False]))
    assert a == b and hash(a) == hash(b)
    assert a != adamfx.adamw(0.1, weight_decay=0.5, weight_decay_mask=np.array([False, True]))
    params = jnp.array([2.0, 2.0])
    updates, _ = a.update(jnp.zeros(2), a.init(params), params)
    np.testing.assert_allclose(updates, [-0.1 * 0.5 * 2.0, 0.0], rtol=1e-6)  # p -= lr wd p where masked


def test_a_mask_of_numbers_is_refused_naming_the_mask():
    with pytest.raises(ValueError, match=r"weight_decay_mask has a leaf 0.5: a mask holds a bool"):
        adamfx.adamw(1e-3, weight_decay_mask={"w": 0.5})


# Combinations a single value cannot show: an argument refused given another, a bad convention.
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
def test_rejects_bad_combinations_naming_the_argument(name, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        getattr(adamfx, name)(**kwargs)
