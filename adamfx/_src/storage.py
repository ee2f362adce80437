"""How a moment is stored between steps.

The moments stage owns storage: it computes every moment in at least float32
and hands it to a *storage* to keep until the next step. A storage is a small
frozen dataclass (so optimizers still compare by value) applied leaf by leaf:

- ``encode(value, default_dtype, key)`` -> what the state holds for this leaf
  (an array, or a small pytree for quantised or factored forms). Its shapes
  and dtypes depend only on ``value``'s, so the state keeps one structure for
  ever (``lax.cond``, checkpoints and flat buffers rely on it);
- ``decode(stored, dtype)`` -> the moment as an array of ``dtype``.

``default_dtype`` is the dtype the moment has when the user asked for nothing
(the parameter's dtype, real for the second moment). ``key`` is a JAX PRNG key
from :func:`leaf_keys` -- distinct per seed, moment, step and leaf -- for
storages that round stochastically, or ``None`` (``init``): round to nearest.

Optionally ``zeros(value, default_dtype)``: the record of an all-zero ``value``
without running the encoder (used by ``init``); and ``accumulate(stored, x,
power, decay, weight, default_dtype, key)`` -> ``(moment, record)`` for the
running sums the stages keep, ``decay * old + weight * |g|^power`` (see
:func:`accumulate`).

Class attributes a stage may read (defaults in brackets, for storages written
elsewhere): ``needs_key`` [False]; ``elementwise`` [True] -- encoding a
concatenation of leaves is as valid as encoding each leaf, so ``fused`` may run
it on flat buffers; ``exact_moment`` [True] -- the stage hands on the moment it
computed and only the next step sees the stored form (False: the storage
*models* the moment, and the stage hands on ``decode(encode(value))``);
``record`` [None] -- the NamedTuple type ``encode`` returns when it keeps
several arrays per leaf: the state then holds that NamedTuple of
parameter-shaped trees (see :func:`stored_form`).

The choices users spell as ``mu_dtype`` / ``nu_dtype``:

====================  ==========================  =============================
spelling              storage                     bytes per element
====================  ==========================  =============================
``None``              like the parameter          4 (float32 params)
a float dtype         :class:`FloatStorage`       2 (bfloat16, float16)
``"int8"``            :class:`Int8Storage`        1 + 4/256 (blocks of 256)
``"factored"`` (nu)   :class:`FactoredStorage`    (n + m) / (n m) per matrix
a storage object      itself                      --
====================  ==========================  =============================
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from adamfx._src.factored import FactoredStorage
from adamfx._src.quantize import Int8Storage, check_rounding_and_seed
from adamfx._src.rounding import stochastic_round
from adamfx._src.tree_math import abs_sq, compute_dtype

# ``stream`` numbers of the moments the stages keep: each moment rounds with its own keys.
MU_STREAM, NU_STREAM, NU_MAX_STREAM = 0, 1, 2  # scale_by_moments, max_nu
TRACE_STREAM, SUM_STREAM, INFINITY_NORM_STREAM, UPDATE_RMS_STREAM = 3, 4, 5, 6  # trace and moment_forms


@dataclasses.dataclass(frozen=True)
class FloatStorage:
    """Keeps the moment as a plain array of ``dtype`` (``None``: like the parameter).

    When ``dtype`` is narrower than the moment (bfloat16 or float16 from
    float32), ``rounding="stochastic"`` (the default for an explicit dtype)
    rounds without bias so that small EMA increments survive on average;
    ``"nearest"`` is the ordinary cast (what optax's ``mu_dtype`` does).
    ``seed`` seeds the rounding (mixed with the step count and the leaf).

    A real ``dtype`` keeps a complex moment as the matching complex dtype
    (complex64 for bfloat16, float16 and float32).

    Prefer bfloat16 (float32's exponent range) to float16 for the second
    moment: ``v ~ g^2`` of gradients below ~1e-2 falls under float16's normal
    range (6e-5), and below 6e-8 it flushes to zero.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.adam(1e-3, mu_dtype=jnp.bfloat16, nu_dtype=adamfx.FloatStorage(jnp.bfloat16, seed=7))
    >>> tx.init({"w": jnp.zeros(3)})[0].nu["w"].dtype
    dtype(bfloat16)
    """

    dtype: Any = None
    rounding: str = "stochastic"
    seed: int = 0

    elementwise: ClassVar[bool] = True
    exact_moment: ClassVar[bool] = True

    def __post_init__(self):
        if self.dtype is not None:
            object.__setattr__(self, "dtype", _float_dtype(self.dtype, "dtype"))
        check_rounding_and_seed(self.rounding, self.seed)

    @property
    def needs_key(self) -> bool:
        return self.rounding == "stochastic"

    def encode(self, value: jax.Array, default_dtype, key=None) -> jax.Array:
        dtype = jnp.dtype(self.dtype if self.dtype is not None else default_dtype)
        if jnp.iscomplexobj(value) and not jnp.issubdtype(dtype, jnp.complexfloating):
            dtype = jnp.promote_types(dtype, jnp.complex64)  # a complex moment keeps its imaginary part
        narrower = jnp.promote_types(dtype, value.dtype) != dtype
        if key is None or not self.needs_key or not narrower:
            return value.astype(dtype)
        return stochastic_round(value, dtype, key)

    def decode(self, stored: jax.Array, dtype) -> jax.Array:
        return stored.astype(dtype)


def _is_int8(spec: Any) -> bool:
    """``"int8"``, ``jnp.int8`` or ``np.dtype("int8")``."""
    if hasattr(spec, "decode"):  # a storage object (str has an ``encode`` method)
        return False
    try:
        return jnp.dtype(spec) == jnp.int8
    except TypeError:
        return False


def _float_dtype(spec: Any, name: str) -> jnp.dtype:
    try:
        dtype = jnp.dtype(spec)
    except TypeError:
        dtype = None
    if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
        raise ValueError(f"{name}={spec!r} is invalid: {_ALLOWED}.")
    return dtype


_ALLOWED = (
    'it must be None, a JAX float dtype (jnp.bfloat16, jnp.float16, jnp.float32, ...), "int8", '
    '"factored" (second moment only) or a storage object (adamfx.FloatStorage, Int8Storage, FactoredStorage)'
)


def resolve_storage(spec: Any, name: str, *, nonnegative: bool = False):
    """A storage object for a user's ``mu_dtype``/``nu_dtype``-style argument ``name``.

    ``nonnegative`` says the moment is never negative (a second moment): it
    allows ``"factored"`` and gives ``"int8"`` its unsigned code.
    """
    if spec is None:
        return FloatStorage(None, rounding="nearest")
    if isinstance(spec, str) and spec == "factored":
        spec = FactoredStorage()
    elif _is_int8(spec):
        spec = Int8Storage()
    if isinstance(spec, FactoredStorage) and not nonnegative:
        raise ValueError(f"{name}={spec!r} is invalid: only a second moment (never negative) can be factored.")
    if isinstance(spec, Int8Storage) and spec.signed is None:
        return dataclasses.replace(spec, signed=not nonnegative)
    if hasattr(spec, "decode") and hasattr(spec, "encode"):
        return spec
    return FloatStorage(_float_dtype(spec, name))


def leaf_keys(storage: Any, count: jax.Array, n_leaves: int, stream: int) -> list:
    """One PRNG key per leaf for a storage that rounds stochastically (else ``None`` per leaf).

    Leaf ``i``'s key is ``fold_in(fold_in(fold_in(key(seed), stream), count), i)``:
    a pure function of the storage's seed, the moment (``stream``), the step
    ``count`` and the leaf, so a run is reproducible and resumes identically.
    """
    if not getattr(storage, "needs_key", False):
        return [None] * n_leaves
    base = jax.random.fold_in(jax.random.fold_in(jax.random.key(storage.seed), stream), count)
    return [jax.random.fold_in(base, i) for i in range(n_leaves)]


def store(storage: Any, value: jax.Array, default_dtype, key=None) -> tuple[jax.Array, Any]:
    """``(moment to hand on, record to keep)`` for a freshly computed moment ``value``."""
    kept = storage.encode(value, default_dtype, key)
    if getattr(storage, "exact_moment", True):
        return value, kept
    return storage.decode(kept, value.dtype), kept


def accumulate(storage: Any, stored: Any, g: jax.Array, power: int, decay, weight, default_dtype, key=None):
    """``new = decay * old + weight * x`` with ``x = g`` (``power=1``) or ``|g|^2`` (``power=2``).

    Returns ``(moment to hand on, record to keep)``. Storages may implement
    ``accumulate`` themselves (int8 keeps a running bound of its scales from
    the block maxima of ``|g|``); otherwise it is ``decode``, combine, :func:`store`.
    """
    if hasattr(storage, "accumulate"):
        return storage.accumulate(stored, g, power, decay, weight, default_dtype, key)
    x = g if power == 1 else abs_sq(g)
    return store(storage, decay * storage.decode(stored, x.dtype) + weight * x, default_dtype, key)


# The state's layout. A storage whose ``encode`` returns one array per leaf keeps a
# tree shaped like the parameters. A storage that keeps several arrays per leaf
# declares ``record``, the NamedTuple type ``encode`` always returns; the state then
# holds that NamedTuple *of parameter-shaped trees* (optax's layout for factored
# states), so every state leaf is an array -- ``nnx.Optimizer`` wraps each
# parameter's state in one ``Variable`` and needs exactly that.


def stored_form(storage: Any, records: list, treedef) -> Any:
    """What the state keeps: the per-leaf ``records`` as parameter-shaped tree(s)."""
    record = getattr(storage, "record", None)
    if record is None:
        return treedef.unflatten(records)
    return record(*(treedef.unflatten([getattr(r, field) for r in records]) for field in record._fields))


def stored_records(storage: Any, stored: Any, treedef) -> list:
    """The per-leaf records of a stored moment (the inverse of :func:`stored_form`)."""
    record = getattr(storage, "record", None)
    if record is None:
        return treedef.flatten_up_to(stored)
    fields = [treedef.flatten_up_to(tree) for tree in stored]
    return [record(*values) for values in zip(*fields, strict=True)]


def parameter_shaped(storage: Any, stored: Any) -> Any:
    """A parameter-shaped tree of the stored moment (for structure checks)."""
    return stored if getattr(storage, "record", None) is None else stored[0]


def init_stored(storage: Any, params: Any, dtype_of, value: float = 0.0) -> Any:
    """The stored form of a moment filled with ``value`` for ``params``; ``dtype_of(param dtype)`` is the default dtype.

    For a zero moment it uses the storage's optional ``zeros(value, default_dtype)``
    (the record of an all-zero ``value``, built without encoding it: XLA would otherwise
    constant-fold the encoder over whole zero leaves at compile time, minutes for large
    ones); any other ``value`` (Adagrad's initial accumulator) is encoded, rounding to nearest.
    """
    leaves, treedef = jax.tree.flatten(params)
    zero = isinstance(value, (int, float)) and value == 0  # a traced value (inject_hyperparams) is encoded
    make = getattr(storage, "zeros", storage.encode) if zero else storage.encode
    records = [make(jnp.full_like(p, value, compute_dtype(dtype_of(p.dtype))), dtype_of(p.dtype)) for p in leaves]
    return stored_form(storage, records, treedef)


def check_keeps_elements(storage: Any, argument: str, spec: Any, stage: str, moment: str) -> None:
    """Raises ValueError unless ``storage`` keeps each element (a running maximum cannot use a model)."""
    if not getattr(storage, "exact_moment", True):
        raise ValueError(
            f"{stage}({argument}={spec!r}) is invalid: {moment} needs a storage that keeps each element "
            '(a float dtype or "int8"), not a model of the moment such as "factored".'
        )


def map_stored(storage: Any, fn, tree: Any, stored: Any, count: jax.Array, stream: int, *rest: Any):
    """Maps ``fn(leaf, record, key, *rest_leaves) -> (moment, record)`` over ``tree``'s leaves.

    ``key`` comes from :func:`leaf_keys`; ``rest`` are trees shaped like ``tree``.
    Returns the tree of moments and the new stored form.
    """
    leaves, treedef = jax.tree.flatten(tree)
    records = stored_records(storage, stored, treedef)
    keys = leaf_keys(storage, count, len(leaves), stream)
    rest_leaves = [treedef.flatten_up_to(other) for other in rest]
    pairs = [fn(*args) for args in zip(leaves, records, keys, *rest_leaves, strict=True)]
    return treedef.unflatten([m for m, _ in pairs]), stored_form(storage, [r for _, r in pairs], treedef)
