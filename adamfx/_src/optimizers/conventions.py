"""The one convention mechanism: how every optimizer turns a convention's row into its chain.

Every optimizer module keeps a table ``convention -> NamedTuple`` of defaults
and composition choices; :func:`lookup` picks the row, :func:`pick` lets an
explicit argument win over the row's default, and :func:`finish` places the
stages every optimizer shares (the gradient options, weight decay, momentum,
the learning rate) around its own core stages. :func:`peer_options` gives a
factory the keyword arguments :func:`finish` takes, spelled out in its signature.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from optax import ScalarOrSchedule

from adamfx._src.core import checks
from adamfx._src.core.base import GradientTransformation, chain
from adamfx._src.stages.clipping import gradient_stages
from adamfx._src.stages.learning_rate import lr_decay
from adamfx._src.stages.weight_decay import add_decayed_weights, decoupled_weight_decay

Factory = TypeVar("Factory", bound=Callable[..., GradientTransformation])
T = TypeVar("T")

#: The keyword-only arguments every optimizer passes on to :func:`finish`: (name, default, annotation).
PEER_OPTIONS: tuple[tuple[str, Any, str], ...] = (
    ("weight_decay_mask", None, "Any"),
    ("decoupled", None, "bool | None"),
    ("decay", 0.0, "float"),
    ("maximize", False, "bool"),
    ("clipnorm", None, "float | None"),
    ("clipvalue", None, "float | None"),
    ("global_clipnorm", None, "float | None"),
    ("loss_scale_factor", None, "float | None"),
)


def peer_options(*, omit: tuple[str, ...] = ()) -> Callable[[Factory], Factory]:
    """Decorates a factory ``f(..., **options)`` so that its signature lists :data:`PEER_OPTIONS` by name.

    The factory receives every option (given or default) in ``options`` and passes them to
    :func:`finish` (or to the factory it specialises). ``inspect.signature``, ``help``, the docs and
    ``optax.inject_hyperparams`` see the explicit keyword-only arguments; an unknown keyword is a
    ``TypeError`` naming it. ``omit`` leaves options out (``adamw`` fixes ``decoupled=True``).
    """
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
        for name, default, annotation in PEER_OPTIONS
        if name not in omit
    ]

    def decorate(factory: Factory) -> Factory:
        own = inspect.signature(factory)
        kept = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        signature = own.replace(parameters=[*kept, *shared])

        @functools.wraps(factory)
        def wrapper(*args: Any, **kwargs: Any) -> GradientTransformation:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return factory(**bound.arguments)

        wrapper.__signature__ = signature  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def lookup(table: Mapping[str, Any], convention: str) -> Any:
    """The row of ``table`` for ``convention``, or a ``ValueError`` naming the choices."""
    checks.check_choice("convention", convention, tuple(table))
    return table[convention]


def pick(value: T | None, default: T) -> T:
    """``value`` unless it is ``None`` (the argument was not given), else the convention's ``default``."""
    return default if value is None else value


def effective_nesterov(nesterov: bool, momentum: Any, convention: Any) -> bool:
    """``nesterov`` unless the convention reads Nesterov without momentum as plain SGD (Keras, optax).

    Keras's ``SGD(nesterov=True)`` and optax's ``sgd``/``rmsprop(nesterov=True)`` with
    momentum 0 take plain steps; PyTorch refuses them (``convention.nesterov_needs_momentum``),
    and :func:`adamfx.trace` raises there.
    """
    return bool(nesterov) and (convention.nesterov_needs_momentum or not checks.is_static_zero(momentum))


def require(factory: str, **values: Any) -> None:
    """Raises ``ValueError`` for a hyperparameter given as ``None`` where this optimizer needs a number.

    (The stages take ``None`` for "keep no such moment"; ``adam(b1=None)`` must not
    silently become RMSprop.)
    """
    for name, value in values.items():
        if value is None:
            allowed = checks.HYPERPARAMETERS[name]._replace(optional=False).describe()
            raise ValueError(f"{name}=None is invalid: {factory}() needs {name}, it must be {allowed}.")


def warn_if_rho(factory: str, decay: Any) -> None:
    """Warns when ``decay`` in [0.5, 1) looks like optax's ``decay`` (the moving-average rate, adamfx's ``rho``)."""
    if checks.is_concrete(decay) and 0.5 <= float(decay) < 1:  # a moving-average rate, surely
        warnings.warn(
            f"{factory}(decay={decay!r}) is the legacy learning-rate decay lr / (1 + decay t), as in Keras; "
            f"optax's rmsprop/adadelta decay is the moving-average rate, which adamfx calls rho: "
            f"did you mean rho={decay!r}?",
            checks.AdamfxWarning,
            stacklevel=5,  # warn_if_rho <- the factory <- peer_options <- porting_aids <- the caller
        )


def finish(
    core: Sequence[GradientTransformation],
    convention: Any,
    *,
    learning_rate: Any,
    decay: float,
    weight_decay: ScalarOrSchedule | None = None,
    weight_decay_mask: Any = None,
    decoupled: bool | None = None,
    momentum: Sequence[GradientTransformation] = (),
    lr_inside: bool = False,
    maximize: bool = False,
    loss_scale_factor: Any = None,
    clipnorm: Any = None,
    clipvalue: Any = None,
    global_clipnorm: Any = None,
):
    """The chain ``gradient [coupled L2] core [momentum] [decoupled decay] lr_decay``.

    ``gradient`` are the stages on the raw gradient that ``maximize``,
    ``loss_scale_factor`` and the clippings ask for
    (:func:`adamfx._src.stages.clipping.gradient_stages`); they come first, as in PyTorch and Keras.

    ``convention`` is the optimizer's row: its ``learning_rate`` is the default
    learning rate and its ``weight_decay`` ("coupled" or "decoupled") the
    meaning of ``weight_decay`` unless ``decoupled`` says otherwise.

    - coupled weight decay (``g += wd p``) comes before ``core``;
    - ``momentum`` (a :func:`trace`, or nothing) follows ``core``; with
      ``lr_inside`` it follows ``lr_decay`` instead, so the buffer holds
      ``-lr_t`` times the updates (Keras ``SGD``/``RMSprop``, optax ``rmsprop``),
      and a decoupled decay becomes :func:`decoupled_weight_decay`, which
      bypasses the buffer;
    - otherwise a decoupled decay (``p -= lr_t wd p``) sits just before ``lr_decay``.
    """
    learning_rate = pick(learning_rate, convention.learning_rate)
    gradient = gradient_stages(
        maximize=maximize,
        loss_scale_factor=loss_scale_factor,
        clipnorm=clipnorm,
        clipvalue=clipvalue,
        global_clipnorm=global_clipnorm,
    )
    decoupled = convention.weight_decay == "decoupled" if decoupled is None else bool(decoupled)
    weight_decay = 0.0 if weight_decay is None else weight_decay
    decayed = [] if checks.is_static_zero(weight_decay) else [add_decayed_weights(weight_decay, weight_decay_mask)]
    if lr_inside and momentum:
        bypassed = decayed and decoupled
        bypass = [decoupled_weight_decay(weight_decay, learning_rate, decay, weight_decay_mask)] if bypassed else []
        tail = [lr_decay(learning_rate, decay), *momentum, *bypass]
    else:
        tail = [*momentum, *(decayed if decoupled else []), lr_decay(learning_rate, decay)]
    return chain(*gradient, *([] if decoupled else decayed), *core, *tail)
