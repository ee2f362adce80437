"""Schedule-free averaging (Defazio et al., 2024, "The Road Less Scheduled") and Keras's decay-first weight decay.

:func:`schedule_free` replaces momentum and the learning-rate schedule of a base
optimizer whose direction ``d_t`` it receives (the normalized gradient of AdamW,
the gradient of SGD; weight decay, if any, already added at ``y``). Three
sequences: ``z`` (the base optimizer's iterate), ``x`` (the average to evaluate
with) and ``y`` (the params, where gradients are taken)::

    z_{t+1} = z_t - lr_t d_t
    c_{t+1} = w_t / sum_{i<=t} w_i,   w_t = (max_{i<=t} lr_i)^weight_lr_power
    x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1}
    y_{t+1} = b1 x_{t+1} + (1 - b1) z_{t+1}
            = y_t + c_{t+1} (z_t - y_t) - lr_t (1 - b1 (1 - c_{t+1})) d_t     (what the stage computes)

``x`` is not stored: ``x = (y - (1 - b1) z) / b1`` (:func:`adamfx.schedule_free_eval_params`).

:func:`adamfx.decay_first` gives Keras's order of weight decay (``p -= lr_t wd p``
*before* the optimizer step, which then sees the decayed params); it only
differs from adding ``wd p`` to the updates for optimizers that read the params,
as schedule-free does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adamfx._src.core import hyperparams as hp
from adamfx._src.core.base import GradientTransformation, Stage
from adamfx._src.core.numerics import compute_dtype, increment, moment_dtype, scalar_like
from adamfx._src.storage.protocol import FloatStorage, Storage, map_stored, resolve_storage, stored_form, stream_of


class ScheduleFreeState(NamedTuple):
    """The state of :func:`adamfx.schedule_free`: the iterate ``z`` and the running averaging weights.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.schedule_free(1.0, 0.9)
    >>> params = {"w": jnp.ones(1)}
    >>> state = tx.update({"w": jnp.ones(1)}, tx.init(params), params)[1]
    >>> int(state.count), state.z["w"], float(state.weight_sum)  # z_1 = z_0 - lr g = 1 - 1
    (1, Array([0.], dtype=float32), 1.0)
    """

    count: jax.Array  # steps taken (t - 1 during step t)
    z: Any  # the base optimizer's iterate, kept in its storage (a float dtype)
    lr_max: jax.Array  # max of the averaging learning rates so far
    weight_sum: jax.Array  # sum_{i<=t} w_i
    learning_rate: jax.Array  # the lr_t of the last z step (warmup and schedule applied; 0 before the first)
    hyperparams: dict  # learning_rate (a number), decay, b1, warmup_steps, weight_lr_power


@dataclasses.dataclass(frozen=True)
class ScheduleFree(Stage):
    learning_rate: float | Callable
    decay: float
    b1: float
    warmup_steps: float
    weight_lr_power: float
    warmup_shift: int  # the z step's warmup is min((t - 1 + shift) / W, 1): 0 optax, 1 torch and Keras
    weights_ahead: bool  # the averaging weights read the learning rate of step t + 1 (optax)
    storage: Storage

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.storage, FloatStorage):
            raise ValueError(
                f"z_dtype={self.storage!r} is invalid: z is an iterate, not a moment; keep it in a float dtype "
                "(None, bfloat16, float32, ...) so that x = (y - (1 - b1) z) / b1 can be rebuilt."
            )
        if self.warmup_shift not in (0, 1) or isinstance(self.warmup_shift, bool):
            raise ValueError(f"warmup_shift={self.warmup_shift!r} is invalid: it must be 0 or 1.")

    def _rate(self, n, values):
        """``warmup(n + shift) schedule(n) / (1 + decay n)`` for n steps taken."""
        base = self.learning_rate(n) if callable(self.learning_rate) else values["learning_rate"]
        rate = jnp.asarray(base, dtype=values["decay"].dtype) / (1 + values["decay"] * n)
        warmup = values["warmup_steps"]
        ramp = jnp.minimum((n + self.warmup_shift) / jnp.where(warmup > 0, warmup, 1), 1)
        return rate * jnp.where(warmup > 0, ramp, 1)

    def init(self, params):
        values = {"decay": self.decay, "b1": self.b1}
        values |= {"warmup_steps": self.warmup_steps, "weight_lr_power": self.weight_lr_power}
        if not callable(self.learning_rate):
            values["learning_rate"] = self.learning_rate
        values = hp.as_arrays(**values)
        leaves, treedef = jax.tree.flatten(params)
        encode = self.storage.encode  # z_1 = y_1 (rounded to nearest: no key at init)
        records = [encode(p.astype(compute_dtype(p.dtype)), default_dtype=moment_dtype(p.dtype)) for p in leaves]
        zero = jnp.zeros([], dtype=float)
        count = jnp.zeros([], jnp.int32)
        z = stored_form(self.storage, records, treedef)
        return ScheduleFreeState(count, z, zero, zero, zero, values)  # no z step yet: lr 0 (the rate depends on
        # warmup_steps and learning_rate, which set_hyperparams and sweep may change before the first step)

    def _weight(self, state, values):
        """``c_{t+1} = w_t / sum_{i<=t} w_i`` (0 while every weight is 0), and the new ``lr_max``, sum."""
        n = state.count + 1 if self.weights_ahead else state.count
        lr_max = jnp.maximum(state.lr_max, self._rate(n, values))
        weight = lr_max ** values["weight_lr_power"]
        weight_sum = state.weight_sum + weight
        c = jnp.where(weight_sum == 0, 0.0, weight / jnp.where(weight_sum == 0, 1.0, weight_sum))
        return c, lr_max, weight_sum

    def update(self, updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("schedule_free needs the params (the y sequence): call update(updates, state, params).")
        values = state.hyperparams
        lr = self._rate(state.count, values)
        c, lr_max, weight_sum = self._weight(state, values)
        b1 = values["b1"]

        def leaf(record, key, d, y):
            dt = compute_dtype(d.dtype)
            d, y = d.astype(dt), y.astype(dt)
            z = self.storage.decode(record, dtype=dt)
            step = scalar_like(lr, d) * d
            u = scalar_like(c, d) * (z - y) - scalar_like(1 - b1 * (1 - c), d) * step  # y_{t+1} - y_t
            _, kept = self.storage.store(z - step, default_dtype=moment_dtype(y.dtype), key=key)  # z_{t+1}
            return u, kept

        count = increment(state.count)
        new, z = map_stored(self.storage, leaf, state.z, updates, params, count=count, stream=stream_of(self, "z"))
        new = jax.tree.map(lambda u, g: u.astype(g.dtype), new, updates)
        return new, ScheduleFreeState(count, z, lr_max, weight_sum, lr, values)


def schedule_free(
    learning_rate: float | Callable = 0.0025,
    b1: float = 0.9,
    *,
    warmup_steps: float = 0,
    weight_lr_power: float = 2.0,
    decay: float = 0.0,
    warmup_shift: int = 1,
    weights_ahead: bool = False,
    z_dtype: Any = None,
) -> GradientTransformation:
    """Schedule-free averaging of the directions it receives (see the module docstring for the rule).

    ``lr_t = warmup(t - 1 + warmup_shift) schedule(t - 1) / (1 + decay (t - 1))`` with
    ``warmup(n) = min(n / warmup_steps, 1)`` (1 when ``warmup_steps`` is 0):
    ``warmup_shift=1`` is ``t / W`` (schedulefree, Keras), ``0`` is ``(t - 1) / W``
    (optax: the first z step is zero). The averaging weight uses ``lr_t``, or with
    ``weights_ahead`` the rate of the next step, ``lr`` read at ``t`` (optax).
    ``weight_lr_power=0`` gives ``c_t = 1 / t`` (Keras). Put it last in a chain:
    it emits ``y_{t+1} - y_t`` and needs the params. ``z_dtype``: the storage of
    ``z`` (a float dtype; default like the params). State: ``count``, ``z``,
    ``lr_max``, ``weight_sum``, the applied ``learning_rate``, and the
    hyperparameters ``learning_rate``, ``decay``, ``b1``, ``warmup_steps``, ``weight_lr_power``.
    Used by :func:`adamfx.schedule_free_adamw` and :func:`adamfx.schedule_free_sgd`.

    >>> import adamfx, jax.numpy as jnp
    >>> tx, p = adamfx.schedule_free(1.0, 0.9), {"w": jnp.ones(1)}
    >>> tx.update({"w": jnp.array([0.5])}, tx.init(p), p)[0]["w"]  # z = x = 1 - 0.5, y = 0.1 z + 0.9 x: y - p
    Array([-0.5], dtype=float32)
    """
    storage = resolve_storage(z_dtype, "z_dtype")
    return ScheduleFree(
        learning_rate, decay, b1, warmup_steps, weight_lr_power, warmup_shift, bool(weights_ahead), storage
    ).transform()
