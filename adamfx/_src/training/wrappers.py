"""optax's training-loop wrappers, made value-comparable.

optax already has the wrappers a training loop needs, and they work with adamfx
optimizers unchanged: ``optax.MultiSteps`` (gradient accumulation),
``optax.apply_if_finite`` (skip non-finite steps), ``optax.partition``
(parameter groups) and ``optax.masked``. adamfx reuses them; what it adds is
value semantics. optax builds each wrapper from closures, which compare by
identity, so wrapping an adamfx optimizer in one makes it unequal to its own
rebuild and a jitted step that takes it as a static argument (or a Flax
``TrainState``) retraces. Here each wrapper is a frozen :class:`~adamfx.Stage`
holding the optax factory and its arguments, and the optax transform is built
from them on each call (at trace time only).

The wrapped optimizer's state is optax's, so :func:`adamfx.hyperparams` and
:func:`adamfx.set_hyperparams` reach through it, and a
:func:`partition`'s labels name parameter groups for their ``group=`` argument.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adamfx._src.core import checks, frozen
from adamfx._src.core.base import GradientTransformation, Stage


@dataclasses.dataclass(frozen=True)
class OptaxWrapper(Stage):
    """``factory(*args)`` (an optax wrapper) as a stage that compares by value.

    ``args`` holds hashable values (adamfx transforms, numbers,
    module-level functions, :func:`adamfx._src.core.frozen.freeze`-frozen pytrees).
    """

    factory: Callable[..., GradientTransformation]
    args: tuple

    @property
    def elementwise(self) -> bool:  # an optax transform may look at whole leaves
        return False

    def _transform(self) -> optax.GradientTransformationExtraArgs:
        return optax.with_extra_args_support(self.factory(*[frozen.thaw(arg) for arg in self.args]))

    def init(self, params):
        return self._transform().init(params)

    def update(self, updates, state, params=None, **extra_args):
        return self._transform().update(updates, state, params, **extra_args)


def _accumulator_dtype(tree: Any):
    """At least float32, wider when the tree holds wider floats (float64 under x64)."""
    dtypes = [leaf.dtype for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    return jnp.result_type(jnp.float32, *dtypes)


def _multi_steps(tx, every_k_schedule, use_grad_mean, should_skip_update_fn, accumulator_dtype):
    def build(tree):
        return optax.MultiSteps(
            tx,
            every_k_schedule,
            use_grad_mean=use_grad_mean,
            should_skip_update_fn=should_skip_update_fn,
            accumulator_dtype=_accumulator_dtype(tree) if accumulator_dtype is None else accumulator_dtype,
        )

    def update(updates, state, params=None, **extra_args):
        return build(state.acc_grads).update(updates, state, params, **extra_args)  # the dtype init chose

    return optax.GradientTransformationExtraArgs(lambda params: build(params).init(params), update)


def multi_steps(
    tx: GradientTransformation,
    every_k_schedule: int | Callable,
    *,
    use_grad_mean: bool = True,
    should_skip_update_fn: Callable | None = None,
    accumulator_dtype: Any = None,
) -> GradientTransformation:
    """Gradient accumulation: ``optax.MultiSteps(tx, every_k_schedule)``, value-comparable.

    For k micro-steps the updates are zero and the gradients are accumulated;
    on the k-th, ``tx`` gets their mean ``(g_1 + ... + g_k) / k`` (sum when
    ``use_grad_mean=False``) and its state advances once. State:
    ``optax.MultiStepsState`` (``mini_step``, ``gradient_step``,
    ``inner_opt_state``, ``acc_grads``). ``accumulator_dtype=None`` accumulates
    in float32, or float64 when the gradients are float64 (optax's default is
    always float32). ``should_skip_update_fn=optax.skip_not_finite`` drops
    non-finite micro-batches.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.multi_steps(adamfx.lr_decay(1.0), every_k_schedule=2)
    >>> u1, state = tx.update({"w": jnp.array([1.0])}, tx.init({"w": jnp.zeros(1)}))
    >>> u1["w"], tx.update({"w": jnp.array([3.0])}, state)[0]["w"]  # nothing, then -lr mean(1, 3)
    (Array([-0.], dtype=float32), Array([-2.], dtype=float32))
    >>> tx == adamfx.multi_steps(adamfx.lr_decay(1.0), every_k_schedule=2)
    True
    """
    if isinstance(every_k_schedule, bool) or not (callable(every_k_schedule) or isinstance(every_k_schedule, int)):
        raise ValueError(
            f"every_k_schedule={every_k_schedule!r} is invalid: it must be an int >= 1 or a schedule step -> int."
        )
    if isinstance(every_k_schedule, int) and every_k_schedule < 1:
        raise ValueError(f"every_k_schedule={every_k_schedule!r} is invalid: it must be an int >= 1.")
    accumulator_dtype = None if accumulator_dtype is None else jnp.dtype(accumulator_dtype)
    args = (tx, every_k_schedule, bool(use_grad_mean), should_skip_update_fn, accumulator_dtype)
    return OptaxWrapper(_multi_steps, args).transform()


def apply_if_finite(tx: GradientTransformation, max_consecutive_errors: int | None = None) -> GradientTransformation:
    """Skips steps whose gradients hold a NaN or an infinity: ``optax.apply_if_finite``, value-comparable.

    On such a step the updates are zero and ``tx``'s state is kept as it was;
    the state (``optax.ApplyIfFiniteState``) counts ``notfinite_count``
    (consecutive), ``total_notfinite`` and ``last_finite``. After
    ``max_consecutive_errors`` skipped steps in a row the next one is applied
    anyway (optax's rule); ``None`` never gives up.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.apply_if_finite(adamfx.adam(1e-3))
    >>> state = tx.init({"w": jnp.ones(2)})
    >>> updates, state = tx.update({"w": jnp.array([1.0, jnp.nan])}, state)
    >>> int(state.total_notfinite), updates["w"].tolist()
    (1, [0.0, 0.0])
    """
    if max_consecutive_errors is None:
        max_consecutive_errors = int(jnp.iinfo(jnp.int32).max)  # the counter saturates there
    if isinstance(max_consecutive_errors, bool) or not isinstance(max_consecutive_errors, int):
        raise ValueError(
            f"max_consecutive_errors={max_consecutive_errors!r} is invalid: it must be None or an int >= 0."
        )
    checks.check_range("max_consecutive_errors", max_consecutive_errors, 0)
    return OptaxWrapper(optax.apply_if_finite, (tx, max_consecutive_errors)).transform()


def _partition(transforms, param_labels):
    return optax.partition(dict(transforms), param_labels)


def partition(transforms: Mapping[Any, GradientTransformation], param_labels: Any) -> GradientTransformation:
    """Parameter groups: a different transform per label, ``optax.partition``, value-comparable.

    ``param_labels`` is a pytree of labels shaped like the params (or a prefix
    of them), or a callable ``params -> such a tree``. Each label's transform
    sees only its leaves. The labels name parameter groups for
    :func:`adamfx.hyperparams` / :func:`adamfx.set_hyperparams` (``group=``).
    A ``weight_decay_mask`` inside a group should be a callable such as
    :func:`exclude_bias_and_norm`: the group's transform sees the params with
    the other groups' leaves replaced by ``optax.MaskedNode``.

    >>> import adamfx, jax.numpy as jnp
    >>> params = {"body": jnp.ones(3), "head": jnp.ones(2)}
    >>> tx = adamfx.partition({"body": adamfx.adam(1e-3), "head": adamfx.adam(1e-2)}, {"body": "body", "head": "head"})
    >>> state = adamfx.set_hyperparams(tx.init(params), learning_rate=3e-2, group="head")
    >>> _, state = tx.update({"body": jnp.ones(3), "head": jnp.ones(2)}, state, params)
    >>> [round(float(adamfx.hyperparams(state, group=g)["learning_rate"]), 4) for g in ("body", "head")]
    [0.001, 0.03]
    """
    if not isinstance(transforms, Mapping) or not transforms:
        raise ValueError(f"transforms={transforms!r} is invalid: it must be a non-empty mapping label -> transform.")
    items = tuple(sorted(transforms.items(), key=lambda item: repr(item[0])))
    return OptaxWrapper(_partition, (items, frozen.freeze(param_labels))).transform()


def masked(tx: GradientTransformation, mask: Any) -> GradientTransformation:
    """Applies ``tx`` only where ``mask`` is true (the rest passes through): ``optax.masked``, value-comparable.

    ``mask`` is a pytree of bools shaped like the params (or a prefix), or a
    callable ``params -> such a tree``.

    >>> import adamfx
    >>> tx = adamfx.masked(adamfx.adam(1e-3), adamfx.exclude_bias_and_norm)
    >>> import jax.numpy as jnp
    >>> params = {"w": jnp.ones((1, 2)), "bias": jnp.ones(2)}
    >>> grads = {"w": jnp.array([[0.5, -2.0]]), "bias": jnp.array([0.5, -2.0])}
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> [round(float(u), 6) for u in updates["w"][0]], [float(u) for u in updates["bias"]]  # bias: passed through
    ([-0.001, 0.001], [0.5, -2.0])
    """
    return OptaxWrapper(optax.masked, (tx, frozen.freeze(mask))).transform()


def exclude_bias_and_norm(params: Any) -> Any:
    """A weight-decay mask: true for leaves with two or more dimensions (kernels, embeddings).

    Biases, normalisation scales and offsets (1-D) and scalars are not decayed,
    the usual practice for AdamW (e.g. BERT, GPT-2, nanoGPT). Use it as
    ``adamfx.adamw(..., weight_decay_mask=adamfx.exclude_bias_and_norm)`` or as
    the mask of :func:`masked`.

    >>> import adamfx, jax.numpy as jnp
    >>> adamfx.exclude_bias_and_norm({"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2), "scale": jnp.ones(2)})
    {'bias': False, 'kernel': True, 'scale': False}
    """
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)
