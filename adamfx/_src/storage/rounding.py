"""Stochastic rounding, and the cheap counter-based random numbers it draws.

Rounding a moment to the *nearest* value of a narrow format loses every change
smaller than half a unit in the last place. With ``b2 = 0.999`` a second moment
moves by 0.1% per step, but bfloat16 keeps 8 significant bits (half an ulp is
0.2%-0.4%): a bfloat16 ``nu`` rounded to nearest stops following the gradients.
Stochastic rounding (Forsythe, 1959; Gupta et al., 2015, "Deep Learning with
Limited Numerical Precision") picks one of the two neighbours ``lo <= x <= hi``
at random,

    round(x) = hi with probability (x - lo) / (hi - lo), else lo,

so ``E[round(x)] = x``: the moving average stays unbiased, and its rounding
noise (variance ``(x - lo)(hi - x)``) averages out over the steps.

The random numbers come from a counter-based hash of the element index (and of
the value being rounded) keyed by a 32-bit word: pure (the same word gives the
same bits), shardable (it is elementwise in ``iota``), and about ten times
cheaper on CPU than ``jax.random.uniform`` over the whole leaf (measured: 19 ms
against 191 ms for 2^23 values on a 2-core machine), which matters because it
runs on every element of every step.

An optimizer step draws *one* word per moment from a JAX PRNG key
(:func:`step_word`) and every leaf uses that same word, its element index and
the bits of the value it rounds: ``(hash(i * 0x9E3779B9 + word) ^ bits(x_i)) * C``
(the hash is computed once per shape, :class:`StepKey`). Since ``word`` is
uniform and independent of ``x``, the result is uniform for every element
whatever its value, so the rounding stays unbiased; elements at the same index
of two leaves of one shape differ through their values (two leaves that hold
equal values round alike -- harmless). The point is compile time: a
per-leaf word is a different constant in each leaf's fused kernel, and XLA:CPU
compiles each distinct kernel separately (30-60 ms each: 14 s for 100 leaves of
64 with a threefry or a hashed constant per leaf), while identical kernels are
compiled once (0.4 s).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from adamfx._src.core import checks
from adamfx._src.core.tracing import traced_once_per_shape

ROUNDINGS = ("stochastic", "nearest")
_GOLDEN = 0x9E3779B9  # 2^32 / golden ratio: consecutive indices land far apart before hashing


def check_rounding_and_seed(rounding: str, seed: int) -> None:
    checks.check_choice("rounding", rounding, ROUNDINGS)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ValueError(f"seed={seed!r} is invalid: it must be an int in [0, 2**32).")


def _mix32(h: jax.Array) -> jax.Array:
    """A 32-bit avalanche hash (Wellons' "lowbias32" constants, hash-prospector, 2018)."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x7FEB352D)
    h = h ^ (h >> 15)
    h = h * jnp.uint32(0x846CA68B)
    return h ^ (h >> 16)


def step_word(seed: int, stream: int, count: jax.Array) -> jax.Array:
    """One random ``uint32`` per (seed, stream, step): ``bits(fold_in(fold_in(key(seed), stream), count))``."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stream), count)
    return jax.random.bits(key, (), jnp.uint32)


def leaf_word(word: jax.Array, i: int) -> jax.Array:
    """The ``i``-th word derived from ``word``: ``hash(word + (i + 1) * 0x9E3779B9)``, distinct for distinct ``i``."""
    return _mix32(word + jnp.uint32((i + 1) * _GOLDEN % 2**32))


class StepKey:
    """A moment's random word for one step, shared by all its leaves (see :func:`adamfx.step_key`).

    ``bits(shape)`` -- the word's bits per element, ``hash(i * 0x9E3779B9 + word)`` --
    is built once per shape and reused by every leaf of that shape, which salts
    it with its own values (:func:`random_bits`): one hash per distinct shape
    and step in the step's HLO, not one per leaf. Lives inside one trace only.
    """

    def __init__(self, word: jax.Array):
        self.word = word
        self._bits: dict[tuple[int, ...], jax.Array] = {}
        self._shared: dict[tuple, tuple[jax.Array, jax.Array]] = {}

    def shared(self, name: str, x: jax.Array, compute):
        """``compute(x)``, computed once per step for the array ``x`` and shared by the moments that use
        this key (the two moments of a stage reduce the same gradient: int8's block maxima)."""
        entry = self._shared.get((name, id(x)))
        if entry is None or entry[0] is not x:  # the array itself is kept, so its id cannot be reused
            entry = self._shared[(name, id(x))] = (x, compute(x))
        return entry[1]

    def bits(self, shape: tuple[int, ...]) -> jax.Array:
        shape = tuple(shape)
        if shape not in self._bits:
            self._bits[shape] = _index_bits(self.word, shape)
        return self._bits[shape]


def as_word(key) -> jax.Array:
    """A ``uint32`` random word: ``key`` itself (or a :class:`StepKey`'s), or one drawn from a JAX PRNG key."""
    if isinstance(key, StepKey):
        return key.word
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or key.dtype != jnp.uint32:
        return jax.random.bits(key, (), jnp.uint32)
    return key


def value_bits(x: jax.Array) -> jax.Array:
    """A coarse fingerprint of real ``x``, one ``uint32`` per element: the top 16 bits of its float32
    (sign, exponent and 7 mantissa bits, i.e. ``x`` rounded down to bfloat16).

    Coarse on purpose: a salt made of every bit would give a fresh random draw to
    a value that moved by one float32 ulp -- which the same maths fused
    differently (``vmap``, ``fused``, sharding, FMA contraction) does -- so two
    programs computing the same step would round differently and drift apart.
    With the top bits, arrays of one shape that hold different values still draw
    independently.
    """
    bits = lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    return bits & jnp.uint32(0xFFFF0000)


def _index_bits(word: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    size = 1
    for dim in shape:
        size *= dim
    index = lax.iota(jnp.uint32, size).reshape(shape)
    return _mix32(index * jnp.uint32(_GOLDEN) + word)


def random_bits(key, shape: tuple[int, ...], salt: jax.Array | None = None) -> jax.Array:
    """32 random bits (``uint32``) per element of ``shape``: ``hash(i * 0x9E3779B9 + k) ^ salt_i``.

    ``i`` is the row-major element index and ``k`` the word ``key`` (a
    :class:`StepKey`, a ``uint32`` scalar, or a JAX PRNG key to draw it from), so
    different words give independent-looking streams. ``salt`` (``uint32`` of
    ``shape``, e.g. :func:`value_bits` of the values to round) tells apart the
    arrays that share ``k``: the bits are then ``(hash ^ salt) * C`` (odd ``C``), a
    bijection of a uniform word independent of the salt, so they stay uniform
    whatever the salt, and the multiply spreads differences in the salt's low bits
    to the high bits that the roundings use.
    """
    bits = key.bits(shape) if isinstance(key, StepKey) else _index_bits(as_word(key), tuple(shape))
    return bits if salt is None else _salted(bits, salt)


def _salted(bits: jax.Array, salt: jax.Array) -> jax.Array:
    # an odd multiple of a uniform word is uniform, and the product carries the salt's low bits upward
    return (bits ^ salt) * jnp.uint32(0x846CA68B)


def uniform(key: jax.Array, shape: tuple[int, ...], salt: jax.Array | None = None) -> jax.Array:
    """``float32`` numbers in ``[0, 1)`` with 24 random bits each, one per element of ``shape``.

    ``key``: a ``uint32`` word or a JAX PRNG key; ``salt``: see :func:`random_bits`.

    >>> import jax
    >>> u = uniform(jax.random.key(0), (1000,))
    >>> bool((u >= 0).all() & (u < 1).all()), round(float(u.mean()), 1)
    (True, 0.5)
    """
    return (random_bits(key, shape, salt) >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)


def stochastic_round(x: jax.Array, dtype, key: jax.Array) -> jax.Array:
    """``x`` rounded to ``dtype`` at random, without bias: ``E[result] = x``.

    The result is always one of the two ``dtype`` values around ``x``; exact
    values, infinities and NaN stay as they are, and a value beyond ``dtype``'s
    range overflows as the ordinary cast does. Complex values round their real
    and imaginary parts independently. ``key``: a ``uint32`` word or a JAX PRNG
    key; the random bits also mix in each element's index and value (see the
    module docstring), so one word may round many arrays.

    >>> import jax, jax.numpy as jnp
    >>> x = jnp.full(10_000, 1 + 2.0**-10)  # a quarter of the way from 1 to the next bfloat16
    >>> r = stochastic_round(x, jnp.bfloat16, jax.random.key(0)).astype(jnp.float32)
    >>> sorted(set(r.tolist())), round(float(r.mean() - 1) * 2**10, 1)
    ([1.0, 1.0078125], 1.0)
    """
    dtype = jnp.dtype(dtype)
    if jnp.iscomplexobj(x):
        part = jnp.finfo(dtype).dtype
        word = as_word(key)
        real = stochastic_round(x.real, part, leaf_word(word, 0))
        imag = stochastic_round(x.imag, part, leaf_word(word, 1))
        return lax.complex(real, imag).astype(dtype)
    if x.dtype == jnp.float32 and dtype == jnp.bfloat16:
        return _float32_to_bfloat16(x, key)
    near = x.astype(dtype)
    back = near.astype(x.dtype)
    toward = jnp.where(back < x, jnp.inf, -jnp.inf).astype(dtype)
    other = jnp.nextafter(near, toward)  # the neighbour on x's other side
    chance = (x - back) / (other.astype(x.dtype) - back)  # in [0, 1/2]; NaN for inf/NaN x
    return jnp.where(uniform(key, x.shape, value_bits(x)) < chance, other, near)


def _float32_to_bfloat16(x: jax.Array, key) -> jax.Array:
    """The same rounding, by bits: bfloat16 is float32's top half, so adding 16 random bits to
    the bottom half carries into the top with probability (bottom half) / 2^16.

    All in integers (the top half *is* the result; a float convert would redo a
    round-to-nearest in software on CPUs without bfloat16 arithmetic): NaN keeps
    its sign and top mantissa bits, made quiet so that it stays NaN.
    """
    return _bfloat16_by_bits(x, random_bits(key, x.shape))  # the index hash: once per shape, shared by the leaves


def _round_to_bfloat16(x: jax.Array, index_bits: jax.Array) -> jax.Array:
    bits = lax.bitcast_convert_type(x, jnp.uint32)
    top = bits + (_salted(index_bits, bits) >> 16)
    top = jnp.where(x != x, bits | jnp.uint32(0x00400000), top) >> 16  # x != x: NaN (made quiet)
    return lax.bitcast_convert_type(top.astype(jnp.uint16), jnp.bfloat16)


_bfloat16_by_bits = traced_once_per_shape(_round_to_bfloat16)
