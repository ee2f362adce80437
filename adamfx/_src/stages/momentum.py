"""The momentum buffer on parameter-shaped updates: ``trace``.

``trace`` is the heavy-ball buffer of SGD and of RMSprop's momentum (Polyak,
1964; Sutskever et al., 2013 for the Nesterov form). Where it sits in a chain
decides whether the learning rate lives inside the buffer:

- before :func:`adamfx.lr_decay` (PyTorch, optax ``sgd``): ``b_t = mu b_{t-1} + g_t``,
  ``p -= lr_t b_t``;
- after it (Keras ``SGD``/``RMSprop``, optax ``rmsprop``): ``b_t = mu b_{t-1} - lr_t g_t``,
  ``p += b_t``. The two agree while the learning rate is constant and differ
  once it changes (a schedule or the legacy ``decay``).

When the learning rate sits inside the buffer, a decoupled weight decay must
not enter it: :func:`adamfx.decoupled_weight_decay` adds ``-lr_t wd p`` on its own.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adamfx._src.core import checks
from adamfx._src.core import hyperparams as hp
from adamfx._src.core.base import GradientTransformation, Stage
from adamfx._src.core.numerics import compute_dtype, increment, moment_dtype, scalar_like
from adamfx._src.storage.protocol import Storage, init_stored, map_stored, parameter_shaped, resolve_storage, stream_of


class TraceState(NamedTuple):
    count: jax.Array  # steps taken (the first step fills the buffer with the update itself)
    trace: Any  # stored momentum buffer
    hyperparams: dict  # momentum, dampening


@dataclasses.dataclass(frozen=True)
class Trace(Stage):
    momentum: float
    dampening: float
    nesterov: bool
    storage: Storage

    def __post_init__(self):
        super().__post_init__()
        momentum, dampening = self.momentum, self.dampening
        concrete = checks.is_concrete(momentum) and checks.is_concrete(dampening)  # traced: inject_hyperparams
        if self.nesterov and concrete and (not momentum or dampening):
            raise ValueError(
                f"nesterov=True needs momentum > 0 and dampening == 0, got momentum={momentum!r}, "
                f"dampening={dampening!r}."
            )

    def init(self, params):
        return TraceState(
            count=jnp.zeros([], jnp.int32),
            trace=init_stored(self.storage, params, moment_dtype),
            hyperparams=hp.as_arrays(momentum=self.momentum, dampening=self.dampening),
        )

    def update(self, updates, state, params=None, **extra_args):
        updates = checks.conform(updates, self.storage, parameter_shaped(self.storage, state.trace), "updates")
        momentum, dampening = state.hyperparams["momentum"], state.hyperparams["dampening"]
        first = state.count == 0
        count = increment(state.count)

        def leaf(record, key, u):
            x = u.astype(compute_dtype(u.dtype))
            mu = scalar_like(momentum, x)
            # b_1 = u_1 (undamped), then b_t = mu b_{t-1} + (1 - dampening) u_t
            decay = jnp.where(first, jnp.zeros_like(mu), mu)
            weight = jnp.where(first, jnp.ones_like(mu), 1 - scalar_like(dampening, x))
            b, kept = self.storage.accumulate(record, x, decay=decay, weight=weight, default_dtype=u.dtype, key=key)
            out = x + mu * b if self.nesterov else b
            return out.astype(u.dtype), kept

        out, kept = map_stored(self.storage, leaf, state.trace, updates, count=count, stream=stream_of(self, "trace"))
        return out, TraceState(count, kept, state.hyperparams)


def trace(
    momentum: float = 0.9, dampening: float = 0.0, nesterov: bool = False, *, mu_dtype=None
) -> GradientTransformation:
    """The momentum buffer: ``b_1 = u_1``, ``b_t = momentum b_{t-1} + (1 - dampening) u_t``.

    Emits ``b_t``, or ``u_t + momentum b_t`` with ``nesterov=True``. The first
    step stores the update itself, undamped (PyTorch's rule; with
    ``dampening=0`` it is the same as starting from a zero buffer, as optax and
    Keras do). State: ``count``, ``trace`` (stored as ``mu_dtype``, default the
    parameter dtype), hyperparameters ``momentum``, ``dampening``. Used by
    :func:`adamfx.sgd` and :func:`adamfx.rmsprop`.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.trace(0.5)
    >>> b, state = tx.update({"w": jnp.array([2.0])}, tx.init({"w": jnp.zeros(1)}))
    >>> b["w"], tx.update({"w": jnp.array([2.0])}, state)[0]["w"]  # b_1 = u_1, b_2 = 0.5 b_1 + u_2
    (Array([2.], dtype=float32), Array([3.], dtype=float32))
    """
    return Trace(momentum, dampening, bool(nesterov), resolve_storage(mu_dtype, "mu_dtype")).transform()
