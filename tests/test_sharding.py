"""Sharded optimizer state on 8 simulated CPU devices (issue 6, item 4).

The root conftest sets ``--xla_force_host_platform_device_count=8``. Reference:
the same jitted step on one device, fed the same gradients (Adam is elementwise,
so the sharded run must agree bit for bit).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import adamfx

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")

SPECS = {
    "embed": P(None, "model"),  # (16, 32)
    "dense": {"kernel": P("data", "model"), "bias": P("model")},  # (32, 8), (8,)
    "norm": P(),  # (6,): replicated, not divisible by the data axis
}
SHAPES = {"embed": (16, 32), "dense": {"kernel": (32, 8), "bias": (8,)}, "norm": (6,)}


def make_mesh(shape=(2, 4), axis_types=AxisType.Auto):
    return jax.make_mesh(shape, ("data", "model"), axis_types=(axis_types,) * 2)


def host_tree(seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda shape: rng.standard_normal(shape).astype(np.float32), SHAPES, is_leaf=_is_shape)


def _is_shape(x):
    return isinstance(x, tuple)


def place(tree, mesh):
    return jax.tree.map(lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec)), tree, SPECS)


def first_mu(state):
    has_mu = lambda node: "mu" in getattr(node, "_fields", ())
    return next(node.mu for node in jax.tree.leaves(state, is_leaf=has_mu) if has_mu(node))


def specs_of(tree):
    return jax.tree.map(lambda x: x.sharding.spec, tree)


def same_sharding(a, b):
    return a.sharding.is_equivalent_to(b.sharding, a.ndim)


LAMB = adamfx.lamb(1e-2, weight_decay=0.1, convention="keras")  # lamb (lion, one moment: test_parity_lion.py)
TRANSFORMS = [
    adamfx.adam(1e-2),
    adamfx.amsgrad(1e-2, convention="torch"),
    adamfx.adamw(1e-2, weight_decay=0.1, weight_decay_mask=adamfx.exclude_bias_and_norm),
    adamfx.multi_steps(adamfx.with_ema(adamfx.adam(1e-2)), 2),
    LAMB,
]


@pytest.mark.parametrize("tx", TRANSFORMS)
def test_state_follows_each_param_sharding_at_init(tx):
    mesh = make_mesh()
    params = place(host_tree(0), mesh)
    eager = tx.init(params)
    sharded = adamfx.init_sharded(tx, params)
    shardings = adamfx.state_shardings(tx, params)
    for state in (eager, sharded):
        for leaf, expected in zip(jax.tree.leaves(state), jax.tree.leaves(shardings), strict=True):
            if leaf.ndim:  # scalars (counts, hyperparameters) are uncommitted in the eager state
                assert leaf.sharding.is_equivalent_to(expected, leaf.ndim)
    assert specs_of(first_mu(sharded)) == SPECS
    n_param_shaped = sum(1 for s in jax.tree.leaves(shardings) if s.spec != P())
    assert n_param_shaped >= 4  # the test saw the moments, not only scalars


def test_state_follows_params_in_explicit_sharding_mode():
    mesh = make_mesh(axis_types=AxisType.Explicit)
    params = place(host_tree(0), mesh)
    tx = adamfx.adam(1e-2)
    with jax.set_mesh(mesh):
        state = jax.jit(tx.init)(params)
    for moment, param in zip(jax.tree.leaves(state[0].mu), jax.tree.leaves(params), strict=True):
        assert same_sharding(moment, param)


def run_steps(tx, params, state, grads_list, out_shardings=None):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step) if out_shardings is None else jax.jit(step, out_shardings=out_shardings)
    for grads in grads_list:
        params, state = step(params, state, grads)
    return params, state


def single_device_run(tx, grads_list):
    params = jax.tree.map(jnp.asarray, host_tree(0))
    return run_steps(tx, params, tx.init(params), [jax.tree.map(jnp.asarray, g) for g in grads_list])


def assert_bitwise_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("tx", TRANSFORMS)
def test_jitted_update_keeps_the_sharding_and_equals_the_single_device_run(tx):
    mesh = make_mesh()
    grads_list = [host_tree(seed) for seed in range(1, 5)]
    params = place(host_tree(0), mesh)
    state = adamfx.init_sharded(tx, params)
    new_params, new_state = run_steps(tx, params, state, [place(g, mesh) for g in grads_list])
    assert specs_of(new_params) == SPECS
    for before, after in zip(jax.tree.leaves(state), jax.tree.leaves(new_state), strict=True):
        assert same_sharding(after, before)  # no out_shardings: XLA kept each leaf where it was
    reference = single_device_run(tx, grads_list)
    if tx is LAMB:
        # LAMB's trust ratio takes the norm of each leaf: the partitioned program sums a sharded leaf per
        # shard and then across shards, one device in one pass, so the ratios -- and the steps they scale --
        # differ in the last bits. The difference is relative to the leaf's scale, not to each element's
        # (an element near 0 can be 32 ulp off its own value): a few ulp of the leaf's largest value.
        for x, y in zip(jax.tree.leaves((new_params, new_state)), jax.tree.leaves(reference), strict=True):
            x, y = np.asarray(x), np.asarray(y)
            scale = np.abs(y).max() if y.size and np.issubdtype(y.dtype, np.floating) else 0
            np.testing.assert_allclose(x, y, rtol=0, atol=4 * np.finfo(np.float32).eps * scale)
    else:  # elementwise maths fuses alike in both programs and agrees bit for bit
        assert_bitwise_equal((new_params, new_state), reference)


def test_zero1_shards_the_state_along_data_even_where_params_are_replicated():
    mesh = make_mesh((4, 2))
    tx = adamfx.adam(1e-2)
    params = place(host_tree(0), mesh)
    shardings = adamfx.state_shardings(tx, params, zero_axis="data")
    mu_specs = jax.tree.map(lambda s: s.spec, shardings[0].mu)
    assert mu_specs == {
        "embed": P("data", "model"),  # replicated on data in the params
        # kernel: already on data; bias (8,): on model (2), and 8 = 2 x 4 also splits it along data
        "dense": {"kernel": P("data", "model"), "bias": P(("model", "data"))},
        "norm": P(),  # 6 does not divide by 4: stays replicated
    }
    assert shardings[0].count.spec == P()


def test_zero1_saves_memory_per_device_and_gives_the_same_results():
    mesh = make_mesh((4, 2))
    tx = adamfx.adam(1e-2)
    grads_list = [host_tree(seed) for seed in range(1, 4)]
    params = place(host_tree(0), mesh)
    param_shardings = jax.tree.map(lambda p: p.sharding, params)
    results = {}
    for zero_axis in (None, "data"):
        state = adamfx.init_sharded(tx, params, zero_axis=zero_axis)
        shardings = adamfx.state_shardings(tx, params, zero_axis=zero_axis)
        out = run_steps(tx, params, state, [place(g, mesh) for g in grads_list], (param_shardings, shardings))
        results[zero_axis] = out
        assert specs_of(out[0]) == SPECS  # the params keep their own sharding
        for leaf, expected in zip(jax.tree.leaves(out[1]), jax.tree.leaves(shardings), strict=True):
            assert leaf.sharding.is_equivalent_to(expected, leaf.ndim)
    device = jax.devices()[0]
    plain = adamfx.bytes_per_device(results[None][1])[device]
    zero = adamfx.bytes_per_device(results["data"][1])[device]
    # Independent count: bytes of mu and nu per device, each leaf divided by its number of shards.
    moments_plain = 2 * 4 * (16 * 32 // 2 + 32 * 8 // 8 + 8 // 2 + 6)
    moments_zero = 2 * 4 * (16 * 32 // 8 + 32 * 8 // 8 + 8 // 8 + 6)
    scalars = plain - moments_plain
    assert zero - scalars == moments_zero
    assert plain / zero > 2.5  # embed's moments (most of the state) are split 4 ways more
    assert_bitwise_equal(results["data"], results[None])
    assert_bitwise_equal(results["data"], single_device_run(tx, grads_list))


def test_state_shardings_through_parameter_groups():
    """Masked groups hold optax.MaskedNode where other groups' params are: the rest still matches."""
    mesh = make_mesh()
    params = place(host_tree(0), mesh)
    labels = {"embed": "a", "dense": {"kernel": "b", "bias": "b"}, "norm": "a"}
    tx = adamfx.partition({"a": adamfx.adam(1e-2), "b": adamfx.adamw(1e-3)}, labels)
    state = adamfx.init_sharded(tx, params, zero_axis="data")
    mu_b = state.inner_states["b"].inner_state[0].mu
    assert mu_b["dense"]["kernel"].sharding.spec == P("data", "model")
    assert mu_b["dense"]["bias"].sharding.spec == P(("model", "data"))
    mu_a = state.inner_states["a"].inner_state[0].mu
    assert mu_a["embed"].sharding.spec == P("data", "model")


def test_bytes_per_device_counts_addressable_shards():
    mesh = make_mesh()
    replicated = jax.device_put(jnp.zeros((8, 4)), NamedSharding(mesh, P()))
    split = jax.device_put(jnp.zeros((8, 4)), NamedSharding(mesh, P("data", "model")))
    assert set(adamfx.bytes_per_device(replicated).values()) == {8 * 4 * 4}
    assert set(adamfx.bytes_per_device(split).values()) == {8 * 4 * 4 // 8}


def test_errors_name_the_problem():
    mesh = make_mesh()
    with pytest.raises(ValueError, match="NamedSharding"):
        adamfx.state_shardings(adamfx.adam(), {"w": jnp.zeros(4)})
    with pytest.raises(ValueError, match="zero_axis"):
        adamfx.state_shardings(adamfx.adam(), place(host_tree(0), mesh), zero_axis="batch")


def test_zero1_splits_a_sharded_vector_along_data_only_when_its_shards_divide():
    mesh = make_mesh()  # data 2 x model 4
    params = {
        "v": jax.device_put(jnp.zeros(16), NamedSharding(mesh, P("model"))),  # 16 = 4 x 2 x 2
        "odd": jax.device_put(jnp.zeros(12), NamedSharding(mesh, P("model"))),  # 12 / 4 = 3: not along data
        "free": jax.device_put(jnp.zeros((4, 6)), NamedSharding(mesh, P("model"))),  # a free dimension first
    }
    specs = jax.tree.map(lambda s: s.spec, adamfx.state_shardings(adamfx.adam(), params, zero_axis="data")[0].mu)
    assert specs == {"v": P(("model", "data")), "odd": P("model"), "free": P("model", "data")}
    state = adamfx.init_sharded(adamfx.adam(), params, zero_axis="data")
    assert {shard.data.shape for shard in state[0].mu["v"].addressable_shards} == {(2,)}


# -- fused(tx): buffers placed like the params they pack ------------------------------------------------

# embed (512 elements) and kernel (256) keep a buffer of their own; bias and norm are packed (14 elements).
FUSED_PACK_BELOW = 256
FUSED = {
    "adam": lambda: adamfx.fused(adamfx.adam(1e-2), pack_below=FUSED_PACK_BELOW),
    "adamw-masked": lambda: adamfx.fused(
        adamfx.adamw(1e-2, weight_decay=0.1, weight_decay_mask=adamfx.exclude_bias_and_norm),
        pack_below=FUSED_PACK_BELOW,
    ),
}


def moment_elements_per_device(state):
    """Elements of every non-scalar leaf on device 0, from the shards (scalars are counted apart)."""
    device = jax.devices()[0]
    leaves = [leaf for leaf in jax.tree.leaves(state) if leaf.ndim]
    return sum(shard.data.size for leaf in leaves for shard in leaf.addressable_shards if shard.device == device)


@pytest.mark.parametrize("zero_axis", [None, "data"])
def test_fused_state_per_device_is_no_more_than_the_unfused_state(zero_axis):
    mesh = make_mesh()  # data 2 x model 4
    params = place(host_tree(0), mesh)
    fx, tx = FUSED["adam"](), adamfx.adam(1e-2)
    fused_state = adamfx.init_sharded(fx, params, zero_axis=zero_axis)
    state = adamfx.init_sharded(tx, params, zero_axis=zero_axis)
    mu = fused_state.inner[0].mu
    assert sorted(mu) == ["['dense']['kernel']", "['embed']", "float32"]
    # Independent count, per moment and device: each buffer divided by its number of shards.
    if zero_axis is None:
        # embed P(None, model), kernel P(data, model), packed bias + norm (14) split along data (2)
        assert specs_of(mu) == {"['embed']": P(None, "model"), "['dense']['kernel']": SPECS["dense"]["kernel"]} | {
            "float32": P(("data",))
        }
        fused_elements, unfused_elements = 512 // 4 + 256 // 8 + 14 // 2, 512 // 4 + 256 // 8 + 8 // 4 + 6
    else:
        # embed gains data; unfused, bias (8,) becomes P((model, data)) and norm (6,) P(data); the packed 14
        # elements were split along data already and do not divide by 8: ZeRO-1 gains them nothing more.
        assert mu["['embed']"].sharding.spec == P("data", "model")
        fused_elements, unfused_elements = 512 // 8 + 256 // 8 + 14 // 2, 512 // 8 + 256 // 8 + 8 // 8 + 6 // 2
    assert moment_elements_per_device(fused_state) == 2 * fused_elements
    assert moment_elements_per_device(state) == 2 * unfused_elements
    device = jax.devices()[0]
    assert adamfx.bytes_per_device(fused_state)[device] <= 1.05 * adamfx.bytes_per_device(state)[device]


@pytest.mark.parametrize("name", sorted(FUSED))
@pytest.mark.parametrize("zero_axis", [None, "data"])
def test_fused_donated_step_keeps_the_shardings_and_equals_the_single_device_unfused_run(name, zero_axis):
    import warnings

    mesh = make_mesh()
    fx = FUSED[name]()
    tx = fx.init.stage.inner  # the unfused optimizer
    grads_list = [host_tree(seed) for seed in range(1, 5)]
    params = place(host_tree(0), mesh)
    state = adamfx.init_sharded(fx, params, zero_axis=zero_axis)
    shardings = adamfx.state_shardings(fx, params, zero_axis=zero_axis)
    param_shardings = jax.tree.map(lambda p: p.sharding, params)

    def step(params, state, grads):
        updates, state = fx.update(grads, state, params)
        return jax.lax.with_sharding_constraint(optax.apply_updates(params, updates), param_shardings), state

    jitted = jax.jit(step, donate_argnums=(0, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Some donated buffers were not usable" would fail here
        for grads in grads_list:
            old = jax.tree.leaves(state)[1]
            params, state = jitted(params, state, place(grads, mesh))
            assert old.is_deleted()
    for leaf, expected in zip(jax.tree.leaves(state), jax.tree.leaves(shardings), strict=True):
        assert leaf.sharding.is_equivalent_to(expected, leaf.ndim)  # no out_shardings: XLA kept them
    assert specs_of(params) == SPECS
    # Reference: the unfused optimizer on one device. XLA:CPU contracts a multiply-add into an FMA in some
    # compiled loops and not in others (tests/test_fused.py, FMA_CONTRACTED; here the packed buffer's loop
    # and ZeRO-1's p + u after the gather), so an update (|u| <= lr, Adam's normalized step) may round once
    # differently, and the param it is added to then by one ulp: per step at most ulp(p) + lr * eps.
    reference_params, _ = single_device_run(tx, grads_list)
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(reference_params), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        bound = len(grads_list) * (np.spacing(np.abs(y)) + 1e-2 * np.finfo(np.float32).eps)
        assert np.all(np.abs(x - y) <= bound)


def test_a_packed_fused_buffer_takes_the_most_shards_that_divide_it():
    mesh = make_mesh()  # data 2 x model 4
    params = {"a": jax.device_put(jnp.zeros(5), NamedSharding(mesh, P())), "b": jnp.zeros(7)}
    params["b"] = jax.device_put(params["b"], NamedSharding(mesh, P()))
    specs = jax.tree.map(lambda s: s.spec, adamfx.state_shardings(adamfx.fused(adamfx.adam()), params))
    assert specs.inner[0].mu == {"float32": P(("model",))}  # 12 elements: 4 shards of 3 (not 2 of 6, nor 8)
    eight = {"a": jax.device_put(jnp.zeros(16), NamedSharding(mesh, P("model")))}
    specs = jax.tree.map(lambda s: s.spec, adamfx.state_shardings(adamfx.fused(adamfx.adam()), eight))
    assert specs.inner[0].mu == {"float32": P(("data", "model"))}


def test_fused_in_explicit_sharding_mode_keeps_sharded_leaves_whole():
    """With Explicit axes the types show the shardings: sharded leaves keep their buffers, whatever their size."""
    mesh = make_mesh(axis_types=AxisType.Explicit)
    params = place(host_tree(0), mesh)
    fx = adamfx.fused(adamfx.adam(1e-2))
    with jax.set_mesh(mesh):
        state = jax.jit(fx.init)(params)
        updates, state = jax.jit(fx.update)(params, state, params)
    mu = state.inner[0].mu
    assert sorted(mu) == ["['dense']['bias']", "['dense']['kernel']", "['embed']", "float32"]  # float32: norm
    for key, param in [("['embed']", params["embed"]), ("['dense']['kernel']", params["dense"]["kernel"])]:
        assert same_sharding(mu[key], param)
    reference, _ = adamfx.adam(1e-2).update(params, adamfx.adam(1e-2).init(params), params)
    for x, y in zip(jax.tree.leaves(updates), jax.tree.leaves(reference), strict=True):
        assert same_sharding(x, y)
        np.testing.assert_array_max_ulp(np.asarray(x), np.asarray(y), maxulp=1)
