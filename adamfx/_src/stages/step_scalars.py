"""Per-step scalars: a stage's scalar maths (``1 - b``, ``1 / (1 - b^t)``, ``-lr_t``, eps) once per step, not per leaf.

A stage maps a function over the leaves; a scalar expression written inside that function is
traced, lowered and handed to XLA once per leaf (XLA then merges the copies, but tracing and
lowering have paid for them, and on hundreds of leaves they made adamfx's step ~1.5x optax's
in StableHLO ops). :func:`per_dtype` computes such an expression once per step for each dtype
the leaves use, and the function mapped over the leaves only reads it: the values are the
same, bit for bit, as the expression evaluated at every leaf.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from adamfx._src.core.numerics import real_dtype


def per_dtype(make: Callable[[Any], Any], *trees: Any) -> Callable[[Any], Any]:
    """``get(dtype)`` returning ``make(dtype)``, computed once for each dtype and reused after.

    The dtypes of the leaves of ``trees`` are computed here, before any leaf's work (so that every
    leaf's kernel reads the scalars alike; XLA otherwise orders the first leaf's operands differently
    and compiles its kernels apart); any other dtype at its first call.

    Build it in a stage's ``update`` (so it lives for one step), e.g. for the EMA rates of the leaves::

        rates = per_dtype(lambda dtype: (1 - one_minus_b.astype(dtype), one_minus_b.astype(dtype)), grads)
        ... jax.tree.map(lambda m, g: rates(g.dtype)[0] * m + rates(g.dtype)[1] * g, mu, grads)
    """
    cache: dict[Any, Any] = {}

    def get(dtype):
        dtype = real_dtype(dtype)  # the scalars of a complex leaf are real
        if dtype not in cache:
            cache[dtype] = make(dtype)
        return cache[dtype]

    for leaf in jax.tree.leaves(trees):
        get(jnp.result_type(leaf))
    return get
