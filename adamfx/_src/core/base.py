"""The protocol every adamfx stage follows, and ``chain``.

adamfx uses optax's base types unchanged: every stage and optimizer **is** an
``optax.GradientTransformationExtraArgs``. What adamfx adds is *value semantics*:
a stage is a frozen dataclass, and the ``init``/``update`` callables handed to
optax are small frozen dataclasses that point back at it. Two optimizers built
with equal arguments therefore compare equal and hash alike, so a jitted step
that takes the optimizer as a static argument does not retrace when the
optimizer is re-created (optax's closures compare by identity).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adamfx._src.core import checks
from adamfx._src.core import hyperparams as hp

GradientTransformation = optax.GradientTransformation
GradientTransformationExtraArgs = optax.GradientTransformationExtraArgs


@dataclasses.dataclass(frozen=True)
class Stage:
    """Base class of adamfx stages: a frozen dataclass with ``init`` and ``update``.

    Subclasses hold their hyperparameters as dataclass fields (the *initial*
    values; the live values travel in the state, see :mod:`adamfx.hyperparams`)
    and implement the optax signatures. ``elementwise`` says whether ``update``
    treats every element independently, so :func:`adamfx.fused` may run the stage
    on flat buffers instead of the parameter tree.

    Construction checks every hyperparameter against the one table
    :data:`adamfx._src.core.checks.HYPERPARAMETERS` (also on ``dataclasses.replace``).

    **Injected hyperparameters.** A hyperparameter given as a JAX array (what
    ``optax.inject_hyperparams`` passes, traced under ``jit``) is *live*: every
    ``update`` reads it from the argument, not from the state, and records it in
    the state. A Python or NumPy number is the initial value of a hyperparameter
    that then lives in the state (:func:`adamfx.set_hyperparams` changes it).

    **Dtypes.** ``update`` returns a state whose leaves keep the dtypes ``init``
    gave them, whatever the dtype of the gradients (``lax.scan`` and
    ``apply_if_finite`` need a fixed carry type).

    >>> import dataclasses, adamfx, jax, jax.numpy as jnp
    >>> @dataclasses.dataclass(frozen=True)
    ... class Double(adamfx.Stage):
    ...     def init(self, params):
    ...         return ()
    ...     def update(self, updates, state, params=None, **extra_args):
    ...         return jax.tree.map(lambda u: 2 * u, updates), state
    >>> tx = Double().transform()
    >>> tx.update({"w": jnp.array([1.5])}, tx.init(None))[0]["w"], Double() == Double()
    (Array([3.], dtype=float32), True)
    """

    live: frozenset = dataclasses.field(default=frozenset(), kw_only=True, repr=False)

    @property
    def elementwise(self) -> bool:
        """Whether ``update`` treats every element on its own (a subclass that does not says so).

        A stage that keeps its moment in a ``storage`` field is as elementwise as that storage
        (int8's blocks and factored rows are not).
        """
        storage = getattr(self, "storage", None)
        return True if storage is None else storage.elementwise

    def hyperparameters(self) -> dict[str, Any]:
        """This stage's hyperparameters by their name in the table (and in the state)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in checks.HYPERPARAMETERS}

    def __post_init__(self):
        injected = {name for name, value in self.hyperparameters().items() if isinstance(value, jax.Array)}
        # 0-d arrays (``learning_rate=jnp.array(1e-3)``) would make the stage unhashable.
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            scalar = checks.as_python_scalar(value)
            if scalar is not value:
                object.__setattr__(self, field.name, scalar)
        if not injected <= self.live:
            object.__setattr__(self, "live", frozenset(self.live | injected))
        for name, value in self.hyperparameters().items():
            checks.check_hyperparameter(name, value)

    def init(self, params):
        raise NotImplementedError

    def update(self, updates, state, params=None, **extra_args):
        raise NotImplementedError

    def checked_update(self, updates, state, params=None, **extra_args):
        """``update`` with the live hyperparameters put into ``state`` and the state's dtypes kept."""
        inner = _inject(self, state) if self.live else state
        updates, new_state = self.update(updates, inner, params, **extra_args)
        return updates, _keep_dtypes(new_state, state)

    def transform(self) -> GradientTransformationExtraArgs:
        """This stage as an optax ``GradientTransformationExtraArgs``."""
        return GradientTransformationExtraArgs(BoundMethod(self, "init"), BoundMethod(self, "update"))


@dataclasses.dataclass(frozen=True)
class Stateless(Stage):
    """A stage that keeps no state: ``init`` gives optax's ``EmptyState``."""

    def init(self, params):
        return identity_state()


def _inject(stage: Stage, state: Any) -> Any:
    """``state`` with the stage's live hyperparameters in its ``hyperparams`` dict."""
    if "hyperparams" not in getattr(state, "_fields", ()):  # not a stage state (a NamedTuple with hyperparams)
        return state
    values = dict(state.hyperparams)
    for name, value in stage.hyperparameters().items():
        if name not in stage.live or value is None or callable(value):
            continue
        key = hp.COMPLEMENT + name if hp.COMPLEMENT + name in values else name
        if key in values:
            stored = values[key]
            values[key] = jnp.asarray(1 - value if key != name else value, dtype=stored.dtype)
    return state._replace(hyperparams=values)


def _keep_dtypes(new_state: Any, old_state: Any) -> Any:
    """``new_state`` with every leaf cast to the dtype of the matching leaf of ``old_state``."""
    new_leaves, treedef = jax.tree.flatten(new_state)
    old_leaves, old_treedef = jax.tree.flatten(old_state)
    if treedef != old_treedef:
        return new_state
    kept = [
        new.astype(old.dtype) if hasattr(new, "dtype") and hasattr(old, "dtype") and new.dtype != old.dtype else new
        for new, old in zip(new_leaves, old_leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, kept)


@dataclasses.dataclass(frozen=True)
class BoundMethod:
    """``stage.<name>`` as a callable that compares and hashes by value."""

    stage: Any  # a Stage, or another frozen dataclass (flat_params's Layout)
    name: str

    def __call__(self, *args, **kwargs):
        name = "checked_update" if self.name == "update" else self.name
        return getattr(self.stage, name)(*args, **kwargs)


def stage_of(tx: GradientTransformation) -> Stage | None:
    """The adamfx :class:`Stage` behind ``tx``, or ``None`` for a foreign transform."""
    init = tx.init
    return init.stage if isinstance(init, BoundMethod) and isinstance(init.stage, Stage) else None


def require_stage(tx: GradientTransformation) -> Stage:
    """The adamfx :class:`Stage` behind ``tx``; ``TypeError`` for a foreign transform."""
    stage = stage_of(tx)
    if stage is None:
        raise TypeError(f"expected an adamfx stage, got a foreign transform ({tx.init!r})")
    return stage


@dataclasses.dataclass(frozen=True)
class Chain(Stage):
    """Runs transforms one after the other; its state is the tuple of their states.

    Integer (and bool, float0) leaves of the params pass through untouched, as
    in optax: their update is zero and the stages see a float32 scalar in
    their place (so the state keeps a scalar stand-in for them). With the params
    given, a gradient leaf whose shape differs from its parameter's is an error
    naming its path. The updates have the gradients' dtypes (the stages compute
    in the state's dtypes, fixed by ``init``).

    >>> import adamfx, jax.numpy as jnp
    >>> both = adamfx.Chain((adamfx.negate(), adamfx.unscale_loss(4.0)))
    >>> both.update({"w": jnp.array([2.0, -8.0])}, both.init({"w": jnp.zeros(2)}))[0]["w"]  # -g / 4
    Array([-0.5,  2. ], dtype=float32)
    """

    transforms: tuple[GradientTransformationExtraArgs, ...]

    @property
    def stages(self) -> tuple[Stage | None, ...]:
        return tuple(stage_of(tx) for tx in self.transforms)

    def init(self, params):
        params = _stand_in(params, _passive(params))
        return tuple(tx.init(params) for tx in self.transforms)

    def update(self, updates, state, params=None, **extra_args):
        if not isinstance(state, tuple) or len(state) != len(self.transforms):
            raise ValueError(
                f"chain of {len(self.transforms)} transforms got a state that is not a tuple "
                f"of {len(self.transforms)} states: {type(state).__name__}"
            )
        passive = None
        if _is_parameter_tree(updates):
            if params is not None and jax.tree.structure(updates) == jax.tree.structure(params):
                checks.check_same_structure(updates, params, "gradients", "params", shapes=True)
                _check_float_gradients(updates, params)
                passive = [a or b for a, b in zip(_passive(updates), _passive(params), strict=True)]
            elif params is None:
                passive = _passive(updates)
        original = updates
        if passive is not None and any(passive):
            updates = _stand_in(updates, passive)
            params = None if params is None else _stand_in(params, passive)
        new_state = []
        for tx, inner_state in zip(self.transforms, state, strict=True):
            updates, inner_state = tx.update(updates, inner_state, params, **extra_args)
            new_state.append(inner_state)
        if passive is not None and any(passive):
            updates = _pass_through(updates, original, passive)
        if passive is not None:
            updates = like_gradients(updates, original)
        return updates, tuple(new_state)


def like_gradients(updates: Any, grads: Any) -> Any:
    """The updates in the gradients' dtypes (the stages compute in the state's, which may be wider).

    optax's ``apply_if_finite`` and ``MultiSteps`` put the updates and zeros like
    the gradients in one ``lax.cond``, so both must have one dtype.
    """
    if jax.tree.structure(updates) != jax.tree.structure(grads):
        return updates
    return jax.tree.map(lambda u, g: u.astype(g.dtype) if u.dtype != g.dtype else u, updates, grads)


def _is_parameter_tree(updates: Any) -> bool:
    """False for the :class:`adamfx.Moments` value the moments stages hand on (not parameter-shaped)."""
    return "nu_correction" not in getattr(updates, "_fields", ())


def _passive(tree: Any) -> list[bool]:
    """Per leaf: is it an integer/bool/float0 leaf, which no optimizer updates?"""
    return [not jnp.issubdtype(getattr(x, "dtype", jnp.float32), jnp.inexact) for x in jax.tree.leaves(tree)]


def _check_float_gradients(grads: Any, params: Any) -> None:
    """Raises ``ValueError`` naming the leaf where a float parameter has an integer or bool gradient
    (which would count as no gradient: its update silently zero)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(grads)
    for (path, g), p in zip(leaves, jax.tree.leaves(params), strict=True):
        dtype, param_dtype = getattr(g, "dtype", None), getattr(p, "dtype", None)
        if dtype is None or param_dtype is None or dtype == jax.dtypes.float0:
            continue
        if jnp.issubdtype(param_dtype, jnp.inexact) and not jnp.issubdtype(dtype, jnp.inexact):
            raise ValueError(
                f"gradients{jax.tree_util.keystr(path)} is {jnp.dtype(dtype).name}, but its parameter is "
                f"{jnp.dtype(param_dtype).name}: a float parameter needs a float gradient (integer, bool and float0 "
                "gradients mean no gradient, for integer parameters)."
            )


def _stand_in(tree: Any, passive: list[bool]) -> Any:
    """``tree`` with its passive leaves replaced by a float32 scalar zero."""
    if not any(passive):
        return tree
    leaves, treedef = jax.tree.flatten(tree)
    stand_in = [jnp.zeros((), jnp.float32) if p else x for x, p in zip(leaves, passive, strict=True)]
    return jax.tree.unflatten(treedef, stand_in)


def _pass_through(updates: Any, original: Any, passive: list[bool]) -> Any:
    """The updates with a zero (or the float0 gradient itself) at every passive leaf."""
    leaves, treedef = jax.tree.flatten(updates)
    given = jax.tree.leaves(original)

    def zero(g):
        return g if g.dtype == jax.dtypes.float0 else jnp.zeros_like(g)

    out = [zero(g) if p else u for u, g, p in zip(leaves, given, passive, strict=True)]
    return jax.tree.unflatten(treedef, out)


def chain(*transforms: GradientTransformation) -> GradientTransformationExtraArgs:
    """Applies ``transforms`` in order, exactly like ``optax.chain``.

    Accepts any optax transform (extra keyword arguments are passed to those that
    take them). The state is the tuple of the inner states, as in optax, so optax
    tree utilities work on it unchanged. Unlike ``optax.chain`` the result compares
    by value: ``chain(a, b) == chain(a, b)`` when ``a`` and ``b`` do.

    >>> import adamfx, jax.numpy as jnp
    >>> tx = adamfx.chain(adamfx.clip_by_global_norm(2.5), adamfx.lr_decay(0.5))
    >>> params = {"w": jnp.zeros(2)}
    >>> updates, state = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(params), params)
    >>> updates["w"]  # -0.5 (3, 4) 2.5 / ||(3, 4)||
    Array([-0.75, -1.  ], dtype=float32)
    >>> len(state), tx == adamfx.chain(adamfx.clip_by_global_norm(2.5), adamfx.lr_decay(0.5))
    (2, True)
    """
    return Chain(tuple(optax.with_extra_args_support(tx) for tx in transforms)).transform()


def identity_state() -> Any:
    """The state of a stage that keeps nothing (optax's ``EmptyState``)."""
    return optax.EmptyState()
