"""8-bit block-wise moment storage (``mu_dtype="int8"``, ``nu_dtype="int8"``).

After Dettmers et al., 2022, "8-bit Optimizers via Block-wise Quantization"
(ICLR; arXiv:2110.02861, 2021): the leaf is cut into blocks of ``block_size``
consecutive elements (row-major); each block keeps one ``float32`` scale, its
absolute maximum, and every element one byte that indexes a *non-linear* code of
values in ``[-1, 1]``, so that elements far below their block's maximum keep
their relative precision. The paper's code is a "dynamic tree"; this module
uses the float-like member of the same family, an 8-bit float normalised to the
block maximum (value = scale * code value / code maximum):

- first moment (signed): sign bit, 4 exponent bits, 3 mantissa bits (E4M3),
  so ``|x| / absmax`` spans 1 down to 2^-17 with <= 6.25% rounding error;
- second moment (unsigned): no sign bit; the spare bit widens the exponent
  (E5M3), because ``v ~ g^2`` spans the square of the first moment's range:
  ``v / absmax`` spans 1 down to 2^-33 (``sqrt(v)`` the same 2^-16.5 as ``mu``).
  Its top code is ``+inf`` (the largest finite code is 1.75): a finite gradient
  whose square overflows gets ``v = inf`` and a zero step, as with float32
  state, and is left out of the block scales, so the rest of its block keeps
  its precision.

Steps stay bounded: in the normal range rounding moves a value by at most one
code step (relative ``2^-M``); below it the steps are absolute, and there the
first moment rounds toward zero and the second away from it (a positive ``v``
never becomes 0). So the decoded ``|m|`` is at most ``(9/8) |m|`` and the decoded
``v`` at least ``(8/9) v``: ``m / sqrt(v)`` never exceeds the exact moments' by
more than ~19%, however far an element sits below its block's maximum (rounding
up to the smallest code, or ``v`` flushing to 0 under a nonzero ``m``, made steps
of ``m / eps``, 100x the float32 ones).

The scale: ``encode`` uses each block's absolute maximum, as the paper does.
Inside an optimizer step (``accumulate``, the moving average) it uses a running
*bound* of it instead, ``s_t = b s_{t-1} + (1 - b) max|g_t|^p`` for
``m_t = b m_{t-1} + (1 - b) |g_t|^p`` (``p = 1``: ``g`` itself): ``|m_t| <= s_t``
always, and only the gradient -- not the new moment -- has to be reduced, so
XLA need not keep a float32 copy of every new moment alive (on CPU that temporary made
the int8 step need *more* memory than fp32). The bound sits above the true
maximum by a factor of a few (``E max g^2 / max E g^2``), which the float-like
code absorbs: its relative precision does not depend on the scale.

Both codes have subnormals (a linear segment down to zero). A real value ``y``
has a *code position* ``p(y)``: an integer at every code value and linear in
between, so rounding to nearest is ``floor(p + 1/2)`` and unbiased stochastic
rounding is ``floor(p + u)``, ``u ~ U[0, 1)`` -- and both are elementwise
arithmetic, no table search.

State: :class:`Quantized` ``(codes, scale)``, two trees shaped like the
parameters; per leaf ``codes`` is uint8 in the leaf's shape and ``scale`` has one
float32 per block, i.e. ``1 + 4 / block_size`` bytes per element. When the last
axis is a multiple of ``block_size`` the blocks tile it and the scales keep the
leading axes (``(..., n / block_size)``), so the state can be sharded like the
parameter; otherwise the blocks run over the flattened, zero-padded leaf. Leaves with
fewer than ``min_size`` elements (and complex leaves) stay in the compute dtype
(float32), where the scale would cost more than it saves.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from adamfx._src.core.numerics import abs_sq, placeholder
from adamfx._src.core.tracing import traced_once_per_shape
from adamfx._src.storage.protocol import Storage
from adamfx._src.storage.rounding import StepKey, as_word, check_rounding_and_seed, value_bits


class CodeFormat(NamedTuple):
    """A float-like code for magnitudes in ``[0, max_value]``: exponent and mantissa bits.

    ``infinity``: the top code stands for ``+inf`` (the unsigned code of the second
    moment, whose ``|g|^2`` can overflow float32 for a finite gradient); the largest
    finite code is then the one below it.
    """

    exponent_bits: int
    mantissa_bits: int
    infinity: bool = False

    @property
    def bias(self) -> int:  # the top exponent field holds the binade [1, 2)
        return 2**self.exponent_bits - 1

    @property
    def max_code(self) -> int:  # the largest finite code
        return 2 ** (self.exponent_bits + self.mantissa_bits) - 1 - self.infinity

    @property
    def max_value(self) -> float:
        return 2.0 - (1 + self.infinity) * 2.0**-self.mantissa_bits


SIGNED = CodeFormat(4, 3)  # plus a sign bit
UNSIGNED = CodeFormat(5, 3, infinity=True)
SIGN_BIT = 0x80
INFINITY_CODE = 0xFF  # of the unsigned code


def _power_of_two(exponent: jax.Array) -> jax.Array:
    """``2.0 ** exponent`` as float32, exactly, for integer exponents in the normal range."""
    return lax.bitcast_convert_type(((exponent + 127) << 23).astype(jnp.uint32), jnp.float32)


def code_position(y: jax.Array, fmt: CodeFormat) -> jax.Array:
    """The code position ``p(y)`` of float32 magnitudes ``0 <= y <= fmt.max_value``.

    With ``e = max(floor(log2 y), 1 - bias)`` and ``M`` mantissa bits,
    ``p(y) = 2^M (e + bias - 1) + y 2^(M - e)``; it equals ``k`` at
    ``y = code_value(k)``. (:func:`quantize` rounds it by integer arithmetic on
    ``y``'s bits, see :func:`_round`; this float form documents and tests it.)
    """
    m = fmt.mantissa_bits
    exponent = (lax.bitcast_convert_type(y, jnp.uint32) >> 23).astype(jnp.int32) - 127
    exponent = jnp.maximum(exponent, 1 - fmt.bias)
    return (2**m * (exponent + fmt.bias - 1)).astype(jnp.float32) + y * _power_of_two(m - exponent)


def code_value(code: jax.Array, fmt: CodeFormat) -> jax.Array:
    """The float32 value of integer codes ``0 <= k <= fmt.max_code`` (inverse of :func:`code_position`).

    ``k = 2^M e + f``: ``(2^M + f) 2^(e - bias - M)`` for ``e >= 1`` -- the float32
    whose bits are ``k`` shifted into the exponent and mantissa fields, exponent
    rebiased -- and ``f 2^(1 - bias - M)`` for ``e = 0``.
    """
    m = fmt.mantissa_bits
    code = code.astype(jnp.int32)
    normal = lax.bitcast_convert_type((code << (23 - m)) + ((127 - fmt.bias) << 23), jnp.float32)
    subnormal = code.astype(jnp.float32) * jnp.float32(2.0 ** (1 - fmt.bias - m))
    return jnp.where(code < 2**m, subnormal, normal)


class Quantized(NamedTuple):
    """A block-wise 8-bit leaf: ``value ~ scale[block] * code_value(codes) / max_value``.

    A leaf that is not quantised keeps its value (float) in ``codes`` and a
    placeholder ``scale`` of shape ``(1,)``.
    """

    codes: jax.Array  # uint8, the leaf's shape; the sign is the top bit when signed
    scale: jax.Array  # the absolute maximum of each block, shape ``n_blocks(codes.shape, block_size)``


def _row_blocks(shape: tuple[int, ...], block_size: int) -> bool:
    """Whether the blocks tile the last axis (then every other axis, and its sharding, is kept)."""
    return len(shape) >= 1 and shape[-1] % block_size == 0


def _blocks(x: jax.Array, block_size: int) -> jax.Array:
    """``x`` as blocks ``(..., n_blocks, block_size)`` of consecutive row-major elements.

    When the last axis is a whole number of blocks the leading axes stay (so
    does a sharding of ``x``); otherwise the leaf is flattened and zero-padded.
    """
    if _row_blocks(x.shape, block_size):
        return x.reshape(*x.shape[:-1], x.shape[-1] // block_size, block_size)
    flat = x.reshape(-1)
    padding = -flat.size % block_size
    if padding:
        flat = jnp.pad(flat, (0, padding))
    return flat.reshape(-1, block_size)


def _unblock(blocks: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    if _row_blocks(shape, blocks.shape[-1]):
        return blocks.reshape(shape)
    return blocks.reshape(-1)[: math.prod(shape)].reshape(shape)


def n_blocks(shape: tuple[int, ...], block_size: int) -> tuple[int, ...]:
    """The shape of the scales of a leaf of ``shape``."""
    if _row_blocks(shape, block_size):
        return (*shape[:-1], shape[-1] // block_size)
    return (-(-math.prod(shape) // block_size),)


def _abs_max(blocks: jax.Array) -> jax.Array:
    # max(max x, -min x), not max |x|: XLA:CPU's reduction with a fused abs runs ~7x slower (measured)
    return jnp.maximum(jnp.max(blocks, axis=-1), -jnp.min(blocks, axis=-1))


def _square_is_finite(x: jax.Array) -> jax.Array:
    """Whether ``x^2`` is finite (false for inf, NaN and ``|x| >= ~2^64``, whose square overflows float32)."""
    return x * x < jnp.inf


def block_max(x: jax.Array, block_size: int) -> jax.Array:
    """The maximum of ``|x|`` over each block of real ``x`` (shape :func:`n_blocks`)."""
    return _abs_max(_blocks(x, block_size))


def bounded_block_max(x: jax.Array, block_size: int) -> jax.Array:
    """:func:`block_max` over the elements whose square is finite (the others count as 0).

    An element whose ``x^2`` overflows gets ``v = inf`` and, as with float32 state,
    a zero step whatever its other moments hold; leaving it out of the block
    scales keeps the rest of its block at full precision. The masked reduction
    (an extra pass over ``x`` on CPU) runs only when some block needs it: when a
    block's maximum squares to a non-finite value, or its sum is NaN -- XLA:CPU's
    max reduction may drop a NaN and, with it, part of the block (measured inside
    ``lax.scan``: 1.18 for a block whose maximum is 1.63), so only the sum tells.
    """
    blocks = _blocks(x, block_size)
    plain = _abs_max(blocks)
    clean = _square_is_finite(plain).all() & ~jnp.isnan(jnp.sum(blocks, axis=-1)).any()
    masked = lambda: block_max(jnp.where(_square_is_finite(x), x, 0), block_size)
    return lax.cond(clean, lambda: plain, masked)


def random_words(key, shape: tuple[int, ...], salt: jax.Array | None = None) -> jax.Array:
    """32 random bits per element for stochastic rounding: ``(i + k) * 0x9E3779B9 mod 2^32``.

    ``i`` is the row-major element index and ``k`` the step's random word
    (:func:`adamfx._src.storage.rounding.as_word` of ``key``: one word serves every leaf
    of a moment, see :func:`adamfx._src.storage.protocol.step_key`). For
    each element, ``(i + k) mod 2^32`` is uniform when ``k`` is, and multiplying by
    an odd constant permutes the 32-bit words, so every element's word is
    exactly uniform and independent from step to step (each step draws a new
    ``k``); within one step neighbouring elements get an evenly spread (Weyl)
    sequence, which biases no element's rounding. One multiply-add per element,
    where a hash of the index (:func:`adamfx._src.storage.rounding.random_bits`) costs
    about as much as the rest of the int8 encode on CPU.

    ``salt`` (the bits of the values being rounded, per element) is xored in and
    the word permuted again, so two leaves of one shape do not round alike.
    """
    index = lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    words = (index + as_word(key)) * jnp.uint32(0x9E3779B9)
    return words if salt is None else (words ^ salt) * jnp.uint32(0x85EBCA6B)


def _round(y: jax.Array, positive: jax.Array, dither: jax.Array, fmt: CodeFormat, signed: bool) -> jax.Array:
    """Codes (int32, ``<= fmt.max_code``) of magnitudes ``y`` for integer ``dither`` in ``[0, 2^(23 - M))``.

    In the normal range ``floor(p(y) + dither / 2^(23 - M))`` is exact integer
    arithmetic on ``y``'s bits: the top ``M`` mantissa bits are the code's
    fraction, the 20 below them the position's fractional part, and a carry
    moves into the exponent as it should. Below the smallest normal code the
    steps are absolute (``2^-M`` of the binade), so rounding there can change a
    value by 100% or more: a first moment (signed) rounds toward zero and a
    second moment (unsigned) away from it (a ``positive`` value never becomes
    0), so the decoded ``|m|`` never exceeds ``(1 + 2^-M) |m|`` and the decoded
    ``v`` never falls under ``v / (1 + 2^-M)``: ``|m| / sqrt(v)`` -- the step --
    stays within ~19% of the exact one, and ``v`` cannot flush to 0 under a
    nonzero ``m`` (which made steps of ``m / eps``).
    """
    m = fmt.mantissa_bits
    bits = lax.bitcast_convert_type(y, jnp.int32)
    normal = jnp.minimum(((bits + dither) >> (23 - m)) - ((127 - fmt.bias) << m), fmt.max_code)
    position = y * jnp.float32(2.0 ** (fmt.bias - 1 + m))  # below 2^M: the subnormal codes
    if signed:
        low = position.astype(jnp.int32)  # toward zero
    else:
        low = jnp.maximum(jnp.ceil(position).astype(jnp.int32), positive.astype(jnp.int32))
    return jnp.where(y < jnp.float32(2.0 ** (1 - fmt.bias)), low, normal)


def quantize(
    x: jax.Array, block_size: int, signed: bool, u: jax.Array | None = None, scale: jax.Array | None = None
) -> Quantized:
    """Block-wise 8-bit codes of the real array ``x``; ``u`` (block-shaped) rounds stochastically.

    ``u``: ``U[0, 1)`` floats, or uniform ``uint32`` words (their top bits are used).

    Without ``u`` each element goes to the nearest code value (in the normal
    range; see :func:`_round` below it). Unsigned codes store ``max(x, 0)`` and
    keep ``+inf`` (a dedicated code); signed codes saturate values beyond the
    scale. ``scale`` (per block, ``>= max |x|`` over the finite ``x``; default:
    the blocks' absolute maxima over their finite elements) is the value of the
    largest finite code.

    >>> import jax.numpy as jnp
    >>> q = quantize(jnp.array([1.0, -0.5, 0.01, 0.0]), block_size=4, signed=True)
    >>> q.codes.dtype, dequantize(q, 4, signed=True)  # 0.01 is 4% off: 0.01 * 1.875 lies between codes
    (dtype('uint8'), Array([ 1.        , -0.5       ,  0.01041667,  0.        ], dtype=float32))
    """
    fmt = SIGNED if signed else UNSIGNED
    shape, blocks = x.shape, _blocks(x, block_size)
    if scale is None:
        magnitude = jnp.abs(blocks) if signed else jnp.maximum(blocks, 0)
        scale = jnp.max(jnp.where(magnitude < jnp.inf, magnitude, 0), axis=-1)
    x, spread = _elementwise_view(x, block_size)
    magnitude = jnp.abs(x) if signed else jnp.maximum(x, 0)
    inverse = spread((fmt.max_value / jnp.where(scale > 0, scale, 1)).astype(jnp.float32))
    y = magnitude.astype(jnp.float32) * inverse
    shift = 23 - fmt.mantissa_bits
    if u is None:
        dither = jnp.int32(1 << (shift - 1))
    elif u.dtype == jnp.uint32:  # random bits: the top ones
        dither = (u.reshape(x.shape) >> (32 - shift)).astype(jnp.int32)
    else:
        dither = (u.reshape(x.shape) * 2.0**shift).astype(jnp.int32)
    code = _round(y, magnitude > 0, dither, fmt, signed).astype(jnp.uint8)
    if signed:
        code = code | jnp.where(x < 0, SIGN_BIT, 0).astype(jnp.uint8)
    else:  # +inf keeps its code
        code = jnp.where(y == jnp.inf, jnp.uint8(INFINITY_CODE), code)
    return Quantized(code if _row_blocks(shape, block_size) else _unblock(code, shape), scale)


def dequantize(q: Quantized, block_size: int, signed: bool) -> jax.Array:
    """The values that :func:`quantize` encoded, in the scale's dtype."""
    fmt = SIGNED if signed else UNSIGNED
    codes, spread = _elementwise_view(q.codes, block_size)
    magnitude = codes & (SIGN_BIT - 1) if signed else codes
    value = code_value(magnitude, fmt) * spread(q.scale / fmt.max_value)
    if signed:
        value = jnp.where(codes >= SIGN_BIT, -value, value)
    else:
        value = jnp.where(codes == INFINITY_CODE, jnp.inf, value)
    return value if _row_blocks(q.codes.shape, block_size) else _unblock(value, q.codes.shape)


def _elementwise_view(x: jax.Array, block_size: int):
    """``x`` as the encoder works on it, and ``spread(per_block)``: per-block values broadcast to it.

    When the blocks tile the last axis that is ``x`` itself (the scales broadcast
    along it), so the encoder's loops run over the leaf's own shape -- the same
    as the update's, which lets XLA fuse them -- else the padded blocks.
    """
    if _row_blocks(x.shape, block_size):
        return x, lambda s: jnp.broadcast_to(s[..., None], (*s.shape, block_size)).reshape(x.shape)
    return _blocks(x, block_size), lambda s: s[..., None]


def _encode_leaf(value: jax.Array, word: jax.Array | None, scale: jax.Array | None, block_size: int, signed: bool):
    """:func:`quantize` of one leaf, rounding stochastically with the step's random ``word`` (None: to nearest).

    The words are drawn in the encoder's own view of the leaf (the leaf itself when the blocks tile
    its last axis): the same row-major words, and no reshape between the old codes and the new
    ones, so XLA can write the new codes over the old ones in place (a reshape made it copy them).
    Salted with the values, so that one word serves every leaf.
    """
    u = None
    if word is not None:
        view, _ = _elementwise_view(value, block_size)
        u = random_words(word, view.shape, salt=value_bits(view))
    return quantize(value, block_size, signed, u, scale)


def _accumulate_leaf(stored: Quantized, g, gmax, decay, weight, word, power: int, block_size: int, signed: bool):
    """``new = decay * decode(stored) + weight * |g|^power`` and its codes under the running-bound scale
    ``decay * scale + weight * gmax^power`` (``gmax``: the gradient's block maxima)."""
    x = g if power == 1 else abs_sq(g)
    new = decay * dequantize(stored, block_size, signed).astype(x.dtype) + weight * x
    bound = (decay * stored.scale + weight * gmax**power).astype(stored.scale.dtype)
    return new, _encode_leaf(new, word, bound, block_size, signed)


_encode = traced_once_per_shape(_encode_leaf, static_argnums=(3, 4))
_accumulate = traced_once_per_shape(_accumulate_leaf, static_argnums=(6, 7, 8))
_decode = traced_once_per_shape(dequantize, static_argnums=(1, 2))
_gradient_block_max = traced_once_per_shape(bounded_block_max, static_argnums=(1,))


@dataclasses.dataclass(frozen=True)
class Int8Storage(Storage):
    """Keeps a moment in 8 bits per element, block-wise (``mu_dtype="int8"`` / ``nu_dtype="int8"``).

    Args:
      block_size: elements per block (one float32 scale each); 256 costs 1.6% extra.
      min_size: leaves with fewer elements stay in float32.
      rounding: ``"stochastic"`` (unbiased; keeps small EMA increments) or
        ``"nearest"`` (as bitsandbytes does).
      seed: seed of the stochastic rounding (mixed with the step count and leaf).
      signed: the code; ``None`` lets the moments stage choose (signed for the
        first moment, unsigned for the second).

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.adam(1e-3, mu_dtype="int8", nu_dtype=adamfx.Int8Storage(block_size=128))
    >>> state = tx.init({"w": jnp.zeros((64, 128)), "b": jnp.zeros(64)})
    >>> state[0].mu.codes["w"].dtype, state[0].nu.scale["w"].shape, state[0].mu.codes["b"].dtype
    (dtype('uint8'), (64, 1), dtype('float32'))
    >>> ema = adamfx.scale_by_moments(0.9, None, mu_dtype=adamfx.Int8Storage(block_size=4, min_size=1))
    >>> m, kept = ema.update({"w": jnp.array([2.0, -1.0, 0.5, 0.0])}, ema.init({"w": jnp.zeros(4)}))
    >>> m.mu["w"], kept.mu.scale["w"]  # 0.1 g, decoded: 1, -1/2 and 1/4 of the block maximum are codes
    (Array([ 0.2 , -0.1 ,  0.05,  0.  ], dtype=float32), Array([0.2], dtype=float32))
    """

    block_size: int = 256
    min_size: int = 4096
    rounding: str = "stochastic"
    seed: int = 0
    signed: bool | None = None

    elementwise: ClassVar[bool] = True  # on a flat buffer the blocks simply fall differently
    exact_moment: ClassVar[bool] = True
    record: ClassVar[type] = Quantized  # the state holds Quantized(codes tree, scale tree)

    def __post_init__(self):
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"block_size={self.block_size!r} is invalid: it must be an int >= 1.")
        if not isinstance(self.min_size, int) or self.min_size < 0:
            raise ValueError(f"min_size={self.min_size!r} is invalid: it must be an int >= 0.")
        check_rounding_and_seed(self.rounding, self.seed)
        if self.signed not in (None, True, False):
            raise ValueError(f"signed={self.signed!r} is invalid: it must be None, True or False.")

    @property
    def needs_key(self) -> bool:
        return self.rounding == "stochastic"

    def _quantizes(self, value: jax.Array) -> bool:
        return value.size >= self.min_size and not jnp.iscomplexobj(value)

    def encode(self, value: jax.Array, *, default_dtype, key=None) -> Quantized:
        if not self._quantizes(value):
            return Quantized(value, placeholder())
        return _encode(value, self._word(key), None, self.block_size, self.signed is not False)

    def _word(self, key) -> jax.Array | None:
        """The step's random word for stochastic rounding (None: round to nearest)."""
        return as_word(key) if key is not None and self.needs_key else None

    def accumulate(self, stored: Quantized, g: jax.Array, *, power=1, decay, weight, default_dtype, key=None):
        """``new = decay * decode(stored) + weight * x``, ``x = g`` or ``|g|^2`` (``power``) -> ``(new, encoded new)``.

        Uses a running-bound scale: encoding ``new`` with its exact block maxima
        needs ``new`` in memory before the reduction (XLA materialises it: 4
        bytes per element of temporary, more than the state saves). The bound
        ``decay * scale + weight * max|g|^power >= max|new|`` reduces only the
        gradient, which is in memory anyway; the float-like code keeps its
        relative precision for any scale, and the bound (an EMA of the block
        maxima of ``|g|^power``) costs a few of the code's 17 (mu) or 33 (nu)
        binades of range.
        """
        if stored.codes.dtype != jnp.uint8:  # a leaf kept as it was: the protocol's default
            return super().accumulate(
                stored, g, power=power, decay=decay, weight=weight, default_dtype=default_dtype, key=key
            )
        gmax = lambda g: _gradient_block_max(g, self.block_size)
        gmax_g = key.shared(f"block_max/{self.block_size}", g, gmax) if isinstance(key, StepKey) else gmax(g)
        signed = self.signed is not False
        return _accumulate(stored, g, gmax_g, decay, weight, self._word(key), power, self.block_size, signed)

    def zeros(self, value: jax.Array, *, default_dtype) -> Quantized:
        """``encode`` of the all-zero ``value``: zero codes and scales."""
        if not self._quantizes(value):
            return Quantized(value, placeholder())
        codes = jnp.zeros_like(value, jnp.uint8)
        return Quantized(codes, jnp.zeros(n_blocks(value.shape, self.block_size), value.dtype))

    def decode(self, stored: Quantized, *, dtype) -> jax.Array:
        if stored.codes.dtype != jnp.uint8:  # kept as it was
            return stored.codes.astype(dtype)
        return _decode(stored, self.block_size, self.signed is not False).astype(dtype)
