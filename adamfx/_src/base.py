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
from typing import Any, ClassVar

import optax

from adamfx._src import checks

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
    """

    elementwise: ClassVar[bool] = True

    def __post_init__(self):
        # 0-d arrays (``learning_rate=jnp.array(1e-3)``) would make the stage unhashable.
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            scalar = checks.as_python_scalar(value)
            if scalar is not value:
                object.__setattr__(self, field.name, scalar)

    def init(self, params):
        raise NotImplementedError

    def update(self, updates, state, params=None, **extra_args):
        raise NotImplementedError

    def transform(self) -> GradientTransformationExtraArgs:
        """This stage as an optax ``GradientTransformationExtraArgs``."""
        return GradientTransformationExtraArgs(_Method(self, "init"), _Method(self, "update"))


@dataclasses.dataclass(frozen=True)
class _Method:
    """``stage.<name>`` as a callable that compares and hashes by value."""

    stage: Stage
    name: str

    def __call__(self, *args, **kwargs):
        return getattr(self.stage, self.name)(*args, **kwargs)


def stage_of(tx: GradientTransformation) -> Stage | None:
    """The adamfx :class:`Stage` behind ``tx``, or ``None`` for a foreign transform."""
    init = tx.init
    return init.stage if isinstance(init, _Method) else None


@dataclasses.dataclass(frozen=True)
class Chain(Stage):
    """Runs transforms one after the other; its state is the tuple of their states."""

    transforms: tuple[GradientTransformationExtraArgs, ...]

    @property
    def stages(self) -> tuple[Stage | None, ...]:
        return tuple(stage_of(tx) for tx in self.transforms)

    def init(self, params):
        return tuple(tx.init(params) for tx in self.transforms)

    def update(self, updates, state, params=None, **extra_args):
        if not isinstance(state, tuple) or len(state) != len(self.transforms):
            raise ValueError(
                f"chain of {len(self.transforms)} transforms got a state that is not a tuple "
                f"of {len(self.transforms)} states: {type(state).__name__}"
            )
        new_state = []
        for tx, inner_state in zip(self.transforms, state, strict=True):
            updates, inner_state = tx.update(updates, inner_state, params, **extra_args)
            new_state.append(inner_state)
        return updates, tuple(new_state)


def chain(*transforms: GradientTransformation) -> GradientTransformationExtraArgs:
    """Applies ``transforms`` in order, exactly like ``optax.chain``.

    Accepts any optax transform (extra keyword arguments are passed to those that
    take them). The state is the tuple of the inner states, as in optax, so optax
    tree utilities work on it unchanged. Unlike ``optax.chain`` the result compares
    by value: ``chain(a, b) == chain(a, b)`` when ``a`` and ``b`` do.

    >>> import adamfx, optax
    >>> tx = adamfx.chain(optax.clip_by_global_norm(1.0), adamfx.adam(1e-3))
    """
    return Chain(tuple(optax.with_extra_args_support(tx) for tx in transforms)).transform()


def identity_state() -> Any:
    """The state of a stage that keeps nothing (optax's ``EmptyState``)."""
    return optax.EmptyState()
