"""How a moment is stored between steps: the :class:`Storage` protocol.

A stage that keeps a moment (``scale_by_moments``, ``trace``, ...) computes it
in at least float32 and hands it to a *storage* to keep until the next step. A
storage is a frozen dataclass (so optimizers still compare by value) deriving
from :class:`Storage`, applied leaf by leaf, with keyword-only operations:

- ``encode(value, *, default_dtype, key=None)`` -> the *record* the state keeps
  for this leaf (an array, or a small NamedTuple of arrays, see ``record``). Its
  shapes and dtypes depend only on ``value``'s, so the state keeps one structure
  for ever (``lax.cond``, checkpoints and flat buffers rely on it);
- ``decode(record, *, dtype)`` -> the moment as an array of ``dtype``;
- ``zeros(value, *, default_dtype)`` -> the record of an all-zero ``value``
  (default: ``encode``; override it to build zeros without running the encoder);
- ``accumulate(record, x, *, decay, weight, default_dtype, key=None)`` ->
  ``(moment, record)`` for ``moment = decay * old + weight * x``, the running
  sums and averages the stages keep (default: decode, combine, :meth:`Storage.store`;
  int8 overrides it to bound its block scales from ``x`` alone);
- ``store(value, *, default_dtype, key=None)`` -> ``(moment to hand on, record)``;
- ``shape(record)`` -> the shape of the moment it keeps, the parameter's (default: the record's,
  or its first field's; factored overrides it): the stages check each gradient leaf against it, so
  a gradient of another shape is an error naming the leaf, not a broadcast;
- ``check_stored(stored)``: raises ``ValueError`` when a moment's stored form is not what the
  storage keeps (a state from another optimizer's ``init``; default: the ``record`` type).

``default_dtype`` is the dtype the moment has when the user asked for nothing
(the parameter's dtype, real for a real moment such as ``|g|^2``). ``key`` is
the moment's random word for this step, for storages that round
stochastically: a :class:`adamfx._src.storage.rounding.StepKey` (or a bare ``uint32``
scalar or PRNG key, in direct calls), distinct per seed, moment and step and the
*same for every leaf* (see :func:`step_key`), or ``None`` (``init``): round to
nearest. Draw per-element bits from it with
:func:`adamfx._src.storage.rounding.random_bits`, salted with the bits of the values
being rounded (``salt=value_bits(x)``): that keeps leaves apart while every
leaf's kernel stays identical (XLA compiles identical kernels once; a per-leaf
constant made compile time grow by ~50 ms per leaf).

Flags (class attributes, or properties): ``needs_key`` (False) -- ``encode``
uses ``key``, and the storage has an int ``seed``; ``elementwise`` (True) --
encoding a concatenation of leaves is as valid as encoding each leaf, so
``fused`` may run it on flat buffers; ``exact_moment`` (True) -- the stage hands
on the moment it computed and only the next step sees the stored form (False:
the storage *models* the moment, and the stage hands on ``decode(encode(value))``);
``record`` (None) -- the NamedTuple type ``encode`` returns when it keeps several
arrays per leaf: the state then holds that NamedTuple of parameter-shaped trees
(see :func:`stored_form`).

A stage keeps a moment with :func:`map_stored`, naming it (``stream``) so that
each moment rounds with its own random numbers, e.g. Adam's first moment::

    def leaf(record, key, g):  # m_t = b1 m_{t-1} + (1 - b1) g_t
        return storage.accumulate(record, g, decay=b1, weight=1 - b1, default_dtype=g.dtype, key=key)

    mu, kept = map_stored(storage, leaf, state.mu, grads, count=count, stream=stream_of(self, "mu"))

The choices users spell as ``mu_dtype`` / ``nu_dtype``:

====================  ==========================  =============================
spelling              storage                     bytes per element
====================  ==========================  =============================
``None``              like the parameter          4 (float32 params)
a float dtype         :class:`FloatStorage`       2 (bfloat16, float16)
``"int8"``            :class:`Int8Storage`        1 + 4/256 (blocks of 256)
``"factored"`` (nu)   :class:`FactoredStorage`    (n + m) / (n m) per matrix
a :class:`Storage`    itself                      --
====================  ==========================  =============================
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, ClassVar, cast

import jax
import jax.numpy as jnp

from adamfx._src.core.numerics import abs_sq, compute_dtype, dtype_of_kind, moment_dtype
from adamfx._src.storage.rounding import StepKey, check_rounding_and_seed, step_word, stochastic_round


@dataclasses.dataclass(frozen=True)
class Storage:
    """The base of every moment storage: how one leaf's moment is kept between steps.

    Subclasses are frozen dataclasses and implement :meth:`encode` and
    :meth:`decode`; the other operations have defaults in terms of those two.
    See the module docstring for the protocol.

    >>> import dataclasses, adamfx, jax.numpy as jnp
    >>> @dataclasses.dataclass(frozen=True)
    ... class Halved(adamfx.Storage):  # a toy: keeps m / 2
    ...     def encode(self, value, *, default_dtype, key=None):
    ...         return (value / 2).astype(default_dtype)
    ...     def decode(self, stored, *, dtype):
    ...         return (2 * stored).astype(dtype)
    >>> tx = adamfx.scale_by_moments(0.5, None, mu_dtype=Halved())
    >>> moments, state = tx.update({"w": jnp.array([4.0])}, tx.init({"w": jnp.zeros(1)}))
    >>> moments.mu["w"], state.mu["w"]  # m = (1 - 0.5) 4, kept as m / 2
    (Array([2.], dtype=float32), Array([1.], dtype=float32))
    """

    elementwise: ClassVar[bool] = True
    exact_moment: ClassVar[bool] = True
    record: ClassVar[type | None] = None

    @property
    def needs_key(self) -> bool:
        """Whether :meth:`encode` rounds with ``key`` (then the storage has an int ``seed``)."""
        return False

    def encode(self, value: jax.Array, *, default_dtype, key: Any = None) -> Any:
        """The record that keeps ``value`` (``key``: this leaf's ``uint32`` random word, or None)."""
        raise NotImplementedError(f"{type(self).__name__} must implement encode")

    def decode(self, stored: Any, *, dtype) -> jax.Array:
        """The moment a record holds, as an array of ``dtype``."""
        raise NotImplementedError(f"{type(self).__name__} must implement decode")

    def zeros(self, value: jax.Array, *, default_dtype) -> Any:
        """The record of the all-zero ``value`` (used by ``init``); by default ``encode(value)``."""
        return self.encode(value, default_dtype=default_dtype)

    def shape(self, stored: Any) -> tuple[int, ...]:
        """The shape of the moment a record keeps, its parameter's: by default the shape of the record,
        or of its first field when the storage keeps a ``record`` NamedTuple (int8's codes).

        A storage whose first field is not parameter-shaped overrides it (factored: row and column
        means). The stages check every gradient leaf against it, so a gradient of another shape is
        an error naming the leaf, never a silent broadcast against the stored moment.
        """
        return tuple(jnp.shape(stored if self.record is None else stored[0]))

    def check_stored(self, stored: Any) -> None:
        """Raises ``ValueError`` when ``stored`` (a moment's stored form, parameter-shaped) is not what this
        storage keeps -- a state built by another optimizer's ``init``. By default: a storage with a
        ``record`` needs that NamedTuple."""
        if self.record is not None and not isinstance(stored, self.record):
            raise ValueError(
                f"the optimizer state holds a {type(stored).__name__} where {self!r} keeps a "
                f"{self.record.__name__} of parameter-shaped trees: {_ANOTHER_INIT}"
            )

    def store(self, value: jax.Array, *, default_dtype, key: Any = None) -> tuple[jax.Array, Any]:
        """``(moment to hand on, record to keep)`` for a freshly computed moment ``value``."""
        kept = self.encode(value, default_dtype=default_dtype, key=key)
        return (value if self.exact_moment else self.decode(kept, dtype=value.dtype)), kept

    def accumulate(
        self, stored: Any, g: jax.Array, *, power: int = 1, decay, weight, default_dtype, key: Any = None
    ) -> tuple[jax.Array, Any]:
        """``new = decay * old + weight * x``, ``x = g`` (``power=1``) or ``|g|^2`` (``power=2``)
        -> ``(new moment to hand on, its record)``.

        ``g`` rather than ``x`` is handed in so that a storage may reduce ``g``
        itself (block maxima, row and column means of ``|g|^2``) without
        materialising ``|g|^2`` (see :class:`adamfx.Int8Storage`, :class:`adamfx.FactoredStorage`).
        """
        x = g if power == 1 else abs_sq(g)
        new = decay * self.decode(stored, dtype=x.dtype) + weight * x
        return self.store(new, default_dtype=default_dtype, key=key)


@dataclasses.dataclass(frozen=True)
class FloatStorage(Storage):
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
    >>> ema = adamfx.scale_by_moments(0.9, None, mu_dtype=adamfx.FloatStorage(jnp.bfloat16, seed=7))
    >>> ema.update({"w": jnp.array([2.5])}, ema.init({"w": jnp.zeros(1)}))[1].mu["w"]  # 0.1 * 2.5, exact in bfloat16
    Array([0.25], dtype=bfloat16)
    """

    dtype: Any = None
    rounding: str = "stochastic"
    seed: int = 0

    def __post_init__(self):
        if self.dtype is not None:
            object.__setattr__(self, "dtype", _float_dtype(self.dtype, "dtype"))
        check_rounding_and_seed(self.rounding, self.seed)

    @property
    def needs_key(self) -> bool:
        return self.rounding == "stochastic"

    def _kept_dtype(self, value_dtype, default_dtype) -> jnp.dtype:
        """The dtype a moment of ``value_dtype`` is kept in: ``dtype`` (else ``default_dtype``), complex if it is."""
        dtype = jnp.dtype(self.dtype if self.dtype is not None else default_dtype)
        if jnp.issubdtype(value_dtype, jnp.complexfloating) and not jnp.issubdtype(dtype, jnp.complexfloating):
            dtype = jnp.promote_types(dtype, jnp.complex64)  # a complex moment keeps its imaginary part
        return dtype

    def encode(self, value: jax.Array, *, default_dtype, key=None) -> jax.Array:
        dtype = self._kept_dtype(value.dtype, default_dtype)
        narrower = jnp.promote_types(dtype, value.dtype) != dtype
        if key is None or not self.needs_key or not narrower:
            return value.astype(dtype)
        return stochastic_round(value, dtype, key)

    def decode(self, stored: jax.Array, *, dtype) -> jax.Array:
        return stored.astype(dtype)

    def check_stored(self, stored: Any) -> None:
        """With an explicit ``dtype``, every stored leaf must be kept in it (``_keep_dtypes`` would otherwise
        go on casting the new moments to a foreign dtype: silently another storage)."""
        if self.dtype is None:  # the default dtype follows each parameter's
            return
        for path, leaf in jax.tree_util.tree_flatten_with_path(stored)[0]:
            found = jnp.result_type(leaf)
            if found != self._kept_dtype(found, None):
                raise ValueError(
                    f"the optimizer state's moment{jax.tree_util.keystr(path)} is {found.name}, but {self!r} "
                    f"keeps it as {jnp.dtype(self.dtype).name}: {_ANOTHER_INIT}"
                )


def _is_int8(spec: Any) -> bool:
    """``"int8"``, ``jnp.int8`` or ``np.dtype("int8")``."""
    return dtype_of_kind(spec, jnp.int8) is not None


def _float_dtype(spec: Any, name: str) -> jnp.dtype:
    dtype = dtype_of_kind(spec, jnp.inexact)
    if dtype is None:
        raise ValueError(f"{name}={spec!r} is invalid: {_ALLOWED}.")
    return dtype


_ANOTHER_INIT = "was the state built by the init of another optimizer (another mu_dtype or nu_dtype)?"

_ALLOWED = (
    'it must be None, a JAX float dtype (jnp.bfloat16, jnp.float16, jnp.float32, ...), "int8", '
    '"factored" (second moment only) or a Storage object (adamfx.FloatStorage, Int8Storage, FactoredStorage)'
)


def resolve_storage(spec: Any, name: str, *, nonnegative: bool = False) -> Storage:
    """The :class:`Storage` for a user's ``mu_dtype``/``nu_dtype``-style argument ``name``.

    ``nonnegative`` says the moment is never negative (a second moment): it
    allows ``"factored"`` and gives ``"int8"`` its unsigned code.
    """
    from adamfx._src.storage.factored import FactoredStorage  # these modules derive their storages from Storage
    from adamfx._src.storage.int8 import Int8Storage

    if spec is None:
        return FloatStorage(None, rounding="nearest")
    if isinstance(spec, str) and spec == "factored":
        spec = FactoredStorage()
    elif not isinstance(spec, Storage) and _is_int8(spec):
        spec = Int8Storage()
    if isinstance(spec, FactoredStorage) and not nonnegative:
        raise ValueError(f"{name}={spec!r} is invalid: only a second moment (never negative) can be factored.")
    if isinstance(spec, Int8Storage) and spec.signed is None:
        return dataclasses.replace(spec, signed=not nonnegative)
    if isinstance(spec, Storage):
        return spec
    return FloatStorage(_float_dtype(spec, name))


def stream_of(stage: Any, field: str) -> str:
    """The name of the moment ``stage`` keeps in its state field ``field``: ``"ScaleByMoments.mu"``.

    Its random numbers derive from this name (:func:`step_key`), so every moment
    of every stage rounds with its own stream and no registry of numbers is kept.
    """
    return f"{type(stage).__name__}.{field}"


def seed_of(storage: Storage) -> int:
    """The int ``seed`` of a storage that rounds with a key (``needs_key``; its own dataclass field)."""
    return cast(Any, storage).seed  # not every Storage has one, only those that need a key


def step_key(storage: Storage, count: jax.Array, stream: str) -> StepKey | None:
    """The moment's random word for step ``count`` (``None`` if the storage needs none), as a :class:`StepKey`.

    ``bits(fold_in(fold_in(key(seed), crc32(stream)), count))``: a pure function
    of the storage's seed, the moment's name and the step, so a run is
    reproducible and resumes identically. One PRNG draw per moment and step,
    shared by all leaves (a threefry per leaf made compile time superlinear).
    """
    if not storage.needs_key:
        return None
    return StepKey(step_word(seed_of(storage), zlib.crc32(stream.encode()), count))


# The state's layout. A storage whose ``encode`` returns one array per leaf keeps a
# tree shaped like the parameters. A storage that keeps several arrays per leaf
# declares ``record``, the NamedTuple type ``encode`` always returns; the state then
# holds that NamedTuple *of parameter-shaped trees* (optax's layout for factored
# states), so every state leaf is an array -- ``nnx.Optimizer`` wraps each
# parameter's state in one ``Variable`` and needs exactly that.


def stored_form(storage: Storage, records: list, treedef) -> Any:
    """What the state keeps: the per-leaf ``records`` as parameter-shaped tree(s)."""
    if storage.record is None:
        return treedef.unflatten(records)
    fields = storage.record._fields
    return storage.record(*(treedef.unflatten([getattr(r, field) for r in records]) for field in fields))


def stored_records(storage: Storage, stored: Any, treedef) -> list:
    """The per-leaf records of a stored moment (the inverse of :func:`stored_form`)."""
    if storage.record is None:
        return treedef.flatten_up_to(stored)
    fields = [treedef.flatten_up_to(tree) for tree in stored]
    return [storage.record(*values) for values in zip(*fields, strict=True)]


def parameter_shaped(storage: Storage, stored: Any) -> Any:
    """A parameter-shaped tree of the stored moment, for the stages' checks of the gradients: the stored
    arrays themselves, or for a storage that keeps a ``record`` per leaf, each leaf's
    :meth:`Storage.shape` (as a ``jax.ShapeDtypeStruct``).

    Raises ``ValueError`` when ``stored`` is not what this storage keeps (:meth:`Storage.check_stored`:
    a state built by another optimizer's ``init``, float32 moments handed to an int8 optimizer).
    """
    storage.check_stored(stored)
    if storage.record is None:
        return stored
    treedef = jax.tree.structure(stored[0])
    shapes = [
        jax.ShapeDtypeStruct(storage.shape(record), jnp.result_type(record[0]))
        for record in stored_records(storage, stored, treedef)
    ]
    return treedef.unflatten(shapes)


def init_stored(storage: Storage, params: Any, dtype_of, value: float = 0.0) -> Any:
    """The stored form of a moment filled with ``value`` for ``params``; ``dtype_of(param dtype)`` is the default dtype.

    For a zero moment it uses :meth:`Storage.zeros` (a storage may build the
    record without encoding: XLA would otherwise constant-fold the encoder over
    whole zero leaves at compile time, minutes for large ones); any other
    ``value`` (Adagrad's initial accumulator) is encoded, rounding to nearest.
    """
    leaves, treedef = jax.tree.flatten(params)
    zero = isinstance(value, (int, float)) and value == 0  # a traced value (inject_hyperparams) is encoded
    make = storage.zeros if zero else storage.encode
    records = [
        make(jnp.full_like(p, value, compute_dtype(dtype_of(p.dtype))), default_dtype=dtype_of(p.dtype)) for p in leaves
    ]
    return stored_form(storage, records, treedef)


def check_keeps_elements(storage: Storage, argument: str, spec: Any, stage: str, moment: str) -> None:
    """Raises ValueError unless ``storage`` keeps each element (a running maximum cannot use a model)."""
    if not storage.exact_moment:
        raise ValueError(
            f"{stage}({argument}={spec!r}) is invalid: {moment} needs a storage that keeps each element "
            '(a float dtype or "int8"), not a model of the moment such as "factored".'
        )


def map_stored(storage: Storage, fn, stored: Any, tree: Any, *rest: Any, count: jax.Array, stream: str, key=None):
    """Maps ``fn(record, key, leaf, *rest_leaves) -> (value, record)`` over ``tree``'s leaves.

    ``stored`` is the moment's stored form (parameter-shaped), ``key`` the
    moment's random word from :func:`step_key` (for ``count`` and the moment's
    name ``stream``, see :func:`stream_of`; or ``key`` when given, e.g. one
    :func:`step_key` shared by the two moments of a stage, which then hash each
    element once), ``rest`` trees shaped like ``tree``. Returns the tree of
    values and the new stored form.
    """
    leaves, treedef = jax.tree.flatten(tree)
    records = stored_records(storage, stored, treedef)
    key = step_key(storage, count, stream) if key is None else key
    rest_leaves = [treedef.flatten_up_to(other) for other in rest]
    pairs = [fn(record, key, *args) for record, *args in zip(records, leaves, *rest_leaves, strict=True)]
    return treedef.unflatten([m for m, _ in pairs]), stored_form(storage, [r for _, r in pairs], treedef)


def default_dtype_of(x: jax.Array, like: jax.Array) -> jnp.dtype:
    """The default dtype of a moment ``x`` of a leaf ``like``: :func:`~adamfx._src.core.numerics.moment_dtype`
    of ``like``'s dtype (float32 for float16), real when ``x`` is real."""
    dtype = moment_dtype(like.dtype)
    return dtype if jnp.iscomplexobj(x) else jnp.finfo(dtype).dtype
