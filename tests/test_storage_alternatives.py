"""Moment storage (bf16 with stochastic rounding, int8, factored) in the stages of Adam's alternatives.

``trace`` (SGD / RMSprop momentum), ``accumulate_squares`` (Adagrad),
``infinity_norm`` (Adamax) and ``update_rms`` (Adadelta) keep their moments
through the same storage helpers as ``scale_by_moments``: the same state layout
(parameter-shaped trees, NamedTuples of them for int8 and factored), keys for
stochastic rounding that depend only on seed, moment, step and leaf, and
training that works under ``jit`` and ``nnx.Optimizer``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamfx
from adamfx._src.core.base import Chain, stage_of
from adamfx._src.stages.moment_forms import AccumulateSquares, InfinityNorm, UpdateRms
from adamfx._src.stages.momentum import Trace
from tests.test_lowbit import PARAMS, assert_trees_equal, loss_fn, nnx_optimizer_matches_functional_loop, run, signature

BF16 = jnp.bfloat16

# name -> (optimizer, storage argument, the stage keeping the moment, its state field, scale_by_moments' field)
CASES = {
    "sgd": (lambda **s: adamfx.sgd(0.3, momentum=0.9, **s), "mu_dtype", Trace, "trace", "mu"),
    "rmsprop": (lambda **s: adamfx.rmsprop(1e-2, momentum=0.5, **s), "mu_dtype", Trace, "trace", "mu"),
    "adagrad": (
        lambda **s: adamfx.adagrad(1.0, initial_accumulator_value=0.1, **s),
        "nu_dtype",
        AccumulateSquares,
        "nu",
        "nu",
    ),
    "adamax": (lambda **s: adamfx.adamax(0.1, **s), "nu_dtype", InfinityNorm, "nu", "nu"),
    "adadelta": (lambda **s: adamfx.adadelta(3.0, **s), "nu_dtype", UpdateRms, "delta_sq", "nu"),
}
SPECS = {"bf16": BF16, "int8": "int8", "factored": "factored"}
PAIRS = [(name, spec) for name in CASES for spec in SPECS if not (spec == "factored" and CASES[name][1] == "mu_dtype")]
PAIRS = [pair for pair in PAIRS if pair != ("adamax", "factored")]  # a running maximum needs every element


def make(name, spec):
    factory, argument = CASES[name][:2]
    return factory(**{argument: spec})


def stages(tx):
    """The adamfx stages of ``tx`` with their states' positions (nested chains flattened)."""
    stage = stage_of(tx)
    if not isinstance(stage, Chain):
        return [(stage, ())]
    return [(s, (i, *path)) for i, sub in enumerate(stage.transforms) for s, path in stages(sub)]


def stored_moment(tx, state, name):
    """The stage of ``name``'s moment and that moment's stored form in ``state``."""
    kind, field = CASES[name][2:4]
    [(stage, path)] = [(s, p) for s, p in stages(tx) if isinstance(s, kind)]
    for i in path:
        state = state[i]
    return stage, getattr(state, field)


@pytest.mark.parametrize("name,spec", PAIRS)
def test_state_layout_is_scale_by_moments_layout(name, spec):
    tx = make(name, SPECS[spec])
    argument, reference_field = CASES[name][1], CASES[name][4]
    reference_state = adamfx.scale_by_moments(**{argument: SPECS[spec]}).init(PARAMS)
    reference = getattr(reference_state, reference_field)
    stage, stored = stored_moment(tx, tx.init(PARAMS), name)
    assert signature(stored) == signature(reference)
    # the same storage as scale_by_moments' moment (int8: the same signed or unsigned code)
    reference_storage = getattr(
        stage_of(adamfx.scale_by_moments(**{argument: SPECS[spec]})), reference_field + "_storage"
    )
    assert stage.storage == reference_storage
    if spec != "bf16":  # a NamedTuple of parameter-shaped trees: one array per parameter and field
        assert type(stored) is type(reference) and all(
            jax.tree.structure(tree) == jax.tree.structure(PARAMS) for tree in stored
        )
    # the layout lasts: a jitted step keeps it
    _, state, _ = run(tx, 2)
    assert signature(stored_moment(tx, state, name)[1]) == signature(reference)


@pytest.mark.parametrize("name,spec", PAIRS)
def test_training_converges_like_float32_storage(name, spec):
    initial = float(loss_fn(PARAMS))
    full = run(make(name, None), 60)[2][-1]
    low = run(make(name, SPECS[spec]), 60)[2][-1]
    assert full < 0.5 * initial
    assert low < 0.5 * initial and low < 1.5 * full, (initial, full, low)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("spec", ["bf16", "int8"])
def test_stochastic_rounding_is_deterministic_and_not_nearest(name, spec):
    nearest = {"bf16": adamfx.FloatStorage(BF16, rounding="nearest"), "int8": adamfx.Int8Storage(rounding="nearest")}
    tx = make(name, SPECS[spec])
    _, first, _ = run(tx, 5)
    _, again, _ = run(make(name, SPECS[spec]), 5)
    assert_trees_equal(first, again)
    _, rounded, _ = run(make(name, nearest[spec]), 5)
    storage = stored_moment(tx, first, name)[0].storage
    kept = lambda s: stored_moment(tx, s, name)[1]
    a, b = ((kept(s) if storage.record is None else kept(s).codes)["w"] for s in (first, rounded))  # int8: codes
    assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_stochastic_rounding_keeps_a_bfloat16_adagrad_sum_on_track():
    """Adding 1 to a bfloat16 sum stalls at 256 when rounded to nearest (256 + 1 ties back to 256)."""
    steps, n = 1000, 4096

    def final_sum(storage):
        tx = adamfx.accumulate_squares(nu_dtype=storage)
        grads = jnp.ones(n)
        step = jax.jit(lambda state: tx.update(grads, state)[1])
        state = tx.init(grads)
        for _ in range(steps):
            state = step(state)
        return np.asarray(state.nu, np.float64)

    assert np.all(final_sum(adamfx.FloatStorage(BF16, rounding="nearest")) == 256)
    stochastic = final_sum(BF16)
    assert abs(stochastic.mean() - steps) < 0.01 * steps  # unbiased: the mean of 4096 sums is within 1%


@pytest.mark.parametrize(
    "name,spec",
    [("sgd", "int8"), ("rmsprop", "bf16"), ("adagrad", "int8"), ("adamax", "int8"), ("adadelta", "factored")],
)
def test_nnx_optimizer_equals_the_functional_loop(name, spec):
    _, final = nnx_optimizer_matches_functional_loop(make(name, SPECS[spec]), 10)
    assert np.isfinite(final)  # (convergence: test_training_converges_like_float32_storage)


@pytest.mark.parametrize(
    "build",
    [
        lambda: adamfx.sgd(0.1, momentum=0.9, mu_dtype="factored"),
        lambda: adamfx.adamax(0.1, nu_dtype="factored"),
        lambda: adamfx.infinity_norm(nu_dtype=adamfx.FactoredStorage()),
    ],
)
def test_storages_that_do_not_fit_are_rejected(build):
    with pytest.raises(ValueError, match="factored"):
        build()


def test_gradients_of_another_structure_are_rejected():
    tx = adamfx.adagrad(0.1, nu_dtype="int8")
    state = tx.init(PARAMS)
    with pytest.raises(ValueError, match="do not match"):
        tx.update({"w": PARAMS["w"]}, state, PARAMS)


def test_centered_rmsprop_rejects_quantised_moments():
    """v - |m|^2 of two 8-bit moments cancels to noise and the step diverges: refused with the reason."""
    with pytest.raises(ValueError, match="centered variance"):
        adamfx.rmsprop(1e-2, centered=True, mu_dtype="int8")
    with pytest.raises(ValueError, match="centered variance"):
        adamfx.rmsprop(1e-2, centered=True, nu_dtype="factored")
