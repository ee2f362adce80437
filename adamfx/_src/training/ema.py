"""An exponential moving average of the parameters: Keras' ``use_ema``.

Keras optimizers (``keras.optimizers.Optimizer(use_ema=True, ema_momentum=0.99,
ema_overwrite_frequency=None)``) keep, after every step t = 1, 2, ... that
produced the new parameters p_t::

    ema_t = p_t                                   (t = 1)
    ema_t = m ema_{t-1} + (1 - m) p_t             (t > 1),   m = ema_momentum

and, when ``ema_overwrite_frequency = f`` is set, replace the parameters by the
average on every step with t % f == 0 (after the average is updated). optax has
no such wrapper (``optax.ema`` averages the *updates*), so :func:`with_ema`
implements it around any transform.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamfx._src.core import checks
from adamfx._src.core import hyperparams as hp
from adamfx._src.core.base import GradientTransformation, GradientTransformationExtraArgs, Stage
from adamfx._src.core.numerics import increment, scalar_like


class EmaState(NamedTuple):
    """The state of :func:`adamfx.with_ema`: the wrapped state and the moving average of the params.

    Read the average with :func:`adamfx.ema_params`; ``ema_momentum`` lives in ``hyperparams``.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.with_ema(adamfx.sgd(0.5), ema_momentum=0.75)
    >>> params = {"w": jnp.ones(1)}
    >>> state = tx.update({"w": jnp.ones(1)}, tx.init(params), params)[1]
    >>> int(state.count), state.ema["w"]  # the average starts at p_1 = 1 - 0.5
    (1, Array([0.5], dtype=float32))
    """

    count: jax.Array  # steps taken (Keras' ``iterations``)
    ema: Any  # moving average of the params (a copy of the params before the first step)
    inner_state: Any  # the wrapped transform's state
    hyperparams: dict  # ema_momentum


@dataclasses.dataclass(frozen=True)
class WithEma(Stage):
    inner: GradientTransformationExtraArgs
    ema_momentum: float
    ema_overwrite_frequency: int | None

    @property
    def elementwise(self) -> bool:  # it runs an inner transform on the parameter tree
        return False

    def init(self, params):
        return EmaState(
            count=jnp.zeros([], jnp.int32),
            ema=jax.tree.map(jnp.copy, params),
            inner_state=self.inner.init(params),
            hyperparams=hp.as_arrays(ema_momentum=self.ema_momentum),
        )

    def update(self, updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("with_ema needs the params: call update(updates, state, params).")
        updates, inner_state = self.inner.update(updates, state.inner_state, params, **extra_args)
        new_params = optax.apply_updates(params, updates)
        momentum = jnp.where(state.count == 0, 0, state.hyperparams["ema_momentum"])  # the first step copies

        def average(e, p):
            m = scalar_like(momentum, p)
            return (m * e + (1 - m) * p).astype(e.dtype)

        ema = jax.tree.map(average, state.ema, new_params)
        count = increment(state.count)
        if self.ema_overwrite_frequency is not None:
            overwrite = count % self.ema_overwrite_frequency == 0

            def to_average(u, e, p):  # p + (e - p) == e up to one rounding
                return jnp.where(overwrite, (e - p).astype(u.dtype), u)

            updates = jax.tree.map(to_average, updates, ema, params)
        return updates, EmaState(count, ema, inner_state, state.hyperparams)


def with_ema(
    tx: GradientTransformation, ema_momentum: float = 0.99, ema_overwrite_frequency: int | None = None
) -> GradientTransformation:
    """Keeps an exponential moving average of the params next to ``tx``, as Keras' ``use_ema``.

    After each step t (the params p_t just updated by ``tx``):
    ``ema = p_t`` at t = 1, then ``ema = m ema + (1 - m) p_t`` with
    ``m = ema_momentum``. With ``ema_overwrite_frequency = f`` the params are
    set to the average on every step with ``t % f == 0`` (the update returned
    is ``ema - p``, so the params equal the average up to one rounding);
    otherwise they are never overwritten and :func:`ema_params` reads the
    average, e.g. for evaluation or at the end of training (Keras'
    ``finalize_variable_values``). ``ema_momentum`` is a hyperparameter in the
    state (:func:`adamfx.set_hyperparams`). State: ``EmaState(count, ema,
    inner_state, hyperparams)``.

    >>> import adamfx, jax.numpy as jnp, optax
    >>> tx = adamfx.with_ema(adamfx.adam(0.1), ema_momentum=0.9)
    >>> params = {"w": jnp.zeros(2)}
    >>> state = tx.init(params)
    >>> for _ in range(2):
    ...     updates, state = tx.update({"w": jnp.ones(2)}, state, params)
    ...     params = optax.apply_updates(params, updates)
    >>> round(float(params["w"][0]), 4), round(float(adamfx.ema_params(state)["w"][0]), 4)
    (-0.2, -0.11)
    """
    checks.check_range("ema_momentum", ema_momentum, 0.0, 1.0, high_inclusive=True)
    if ema_overwrite_frequency is not None and (
        isinstance(ema_overwrite_frequency, bool)
        or not isinstance(ema_overwrite_frequency, int)
        or ema_overwrite_frequency < 1
    ):
        raise ValueError(
            f"ema_overwrite_frequency={ema_overwrite_frequency!r} is invalid: it must be None or an int >= 1."
        )
    return WithEma(optax.with_extra_args_support(tx), ema_momentum, ema_overwrite_frequency).transform()


def ema_params(state: Any) -> Any:
    """The moving average of the params kept by :func:`with_ema`, found anywhere in ``state``.

    >>> import adamfx, jax.numpy as jnp
    >>> tx, params = adamfx.with_ema(adamfx.lr_decay(1.0), ema_momentum=0.5), {"w": jnp.array([4.0])}
    >>> state = tx.init(params)
    >>> for p in ([3.0], [2.0]):  # params 3 then 2: the average is 3, then 0.5 * 3 + 0.5 * 2
    ...     _, state = tx.update({"w": jnp.ones(1)}, state, {"w": jnp.array(p) + 1})
    >>> adamfx.ema_params(state)["w"]
    Array([2.5], dtype=float32)
    """
    found = [s for s in jax.tree.leaves(state, is_leaf=lambda n: isinstance(n, EmaState)) if isinstance(s, EmaState)]
    if not found:
        raise ValueError("this optimizer state keeps no moving average of the params: wrap the optimizer in with_ema.")
    return found[0].ema
