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

Class attributes a stage may read (defaults in brackets, for storages written
elsewhere): ``needs_key`` [False]; ``elementwise`` [True] -- encoding a
concatenation of leaves is as valid as encoding each leaf, so ``fused`` may run
it on flat buffers; ``exact_moment`` [True] -- the stage hands on the moment it
computed and only the next step sees the stored form (False: the storage
*models* the moment, and the stage hands on ``decode(encode(value))``).

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

# ``stream`` numbers of the moments the core stages keep (other stages pick their own).
MU_STREAM, NU_STREAM, NU_MAX_STREAM = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class FloatStorage:
    """Keeps the moment as a plain array of ``dtype`` (``None``: like the parameter).

    When ``dtype`` is narrower than the moment (bfloat16 or float16 from
    float32), ``rounding="stochastic"`` (the default for an explicit dtype)
    rounds without bias so that small EMA increments survive on average;
    ``"nearest"`` is the ordinary cast (what optax's ``mu_dtype`` does).
    ``seed`` seeds the rounding (mixed with the step count and the leaf).

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


def leaf_keys(storage: Any, count: jax.Array, tree: Any, stream: int) -> Any:
    """A tree like ``tree`` holding one PRNG key per leaf, or ``None`` leaves if ``storage`` needs none.

    Leaf ``i``'s key is ``fold_in(fold_in(fold_in(key(seed), stream), count), i)``:
    a pure function of the storage's seed, the moment (``stream``), the step
    ``count`` and the leaf, so a run is reproducible and resumes identically.
    """
    leaves, treedef = jax.tree.flatten(tree)
    if not getattr(storage, "needs_key", False):
        return treedef.unflatten([None] * len(leaves))
    base = jax.random.fold_in(jax.random.fold_in(jax.random.key(storage.seed), stream), count)
    return treedef.unflatten([jax.random.fold_in(base, i) for i in range(len(leaves))])


def store(storage: Any, value: jax.Array, default_dtype, key=None) -> tuple[jax.Array, Any]:
    """``(moment to hand on, what to keep)`` for a freshly computed moment ``value``."""
    kept = storage.encode(value, default_dtype, key)
    if getattr(storage, "exact_moment", True):
        return value, kept
    return storage.decode(kept, value.dtype), kept
