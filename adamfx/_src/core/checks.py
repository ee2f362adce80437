"""Validation helpers: the table of hyperparameters, trees at ``init``/``update``, porting aids.

Every message names the argument (or the leaf path), the value it got and what is allowed.

**One table.** :data:`HYPERPARAMETERS` lists every hyperparameter any adamfx stage
keeps, with its range. The stages check their fields against it in
``__post_init__`` (so ``dataclasses.replace`` cannot bypass it),
:func:`adamfx.set_hyperparams` checks new values against it, and
:func:`adamfx.restore_state` checks a checkpoint's values against it. A value
must be a real scalar (a Python or NumPy number, or a 0-d array), finite, in
range, and representable in the state's dtype (float32, float64 under x64):
``1e39`` overflows float32 and ``1e-50`` would be stored as 0. Traced values
(inside ``jit``) cannot be checked and are accepted.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer


class AdamfxWarning(UserWarning):
    """The category of every warning adamfx itself gives (e.g. a ``decay`` that looks like a moving-average rate).

    >>> import adamfx, warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     _ = adamfx.rmsprop(1e-3, decay=0.9)  # optax's rmsprop(decay=) is adamfx's rho
    >>> [w.category.__name__ for w in caught]
    ['AdamfxWarning']
    """


class Range(NamedTuple):
    """The values a hyperparameter may take: a real number in ``[low, high)`` (or ``[low, high]``)."""

    low: float = 0.0
    high: float = math.inf
    high_inclusive: bool = False
    schedule: bool = False  # a callable ``count -> value`` is allowed too
    optional: bool = False  # ``None`` is allowed (it switches something off)

    def describe(self) -> str:
        bracket = "]" if self.high_inclusive else ")"
        text = f"a real number in [{self.low}, {self.high}{bracket}"
        if self.schedule:
            text += " or a schedule callable"
        if self.optional:
            text += " or None"
        return text


_RATE = Range(0.0, 1.0)  # a moving-average rate: 1 would never forget, so it is excluded
_FRACTION = Range(0.0, 1.0, high_inclusive=True)

#: Every hyperparameter of every adamfx stage, by the name the stage, the state and
#: :func:`adamfx.set_hyperparams` use.
HYPERPARAMETERS: dict[str, Range] = {
    "learning_rate": Range(schedule=True),
    "decay": Range(),  # legacy Keras inverse-time decay of the learning rate
    "lr_decay": Range(),  # PyTorch Adagrad's name for it
    "weight_decay": Range(schedule=True),  # optax: adamw, nadamw, adamaxw, adadelta take a schedule
    "b1": _RATE,
    "b2": _RATE,
    "rho": _RATE,  # RMSprop's and Adadelta's moving-average rate
    "eps": Range(),
    "eps_root": Range(),
    "momentum": _FRACTION,  # SGD's and RMSprop's momentum buffer
    "dampening": _FRACTION,
    "momentum_decay": Range(optional=True),  # Nadam's psi; None: constant momentum
    "threshold": Range(4.0),  # RAdam: rho_t must reach it; below 4 the rectification is imaginary
    "initial_accumulator_value": Range(),
    "ema_momentum": _FRACTION,
    # schedule_free_adamw / schedule_free_sgd
    "warmup_steps": Range(),  # linear warmup length (0: none); schedulefree's warmup_steps
    "weight_lr_power": Range(),  # averaging weights lr_max^power (0: c_t = 1/t)
    # lion / cautious
    "cautious_factor": _FRACTION,  # lion-pytorch: weight of the masked-out components (0 drops them)
    # adafactor
    "decay_rate": Range(),  # b2_t = 1 - t^(-decay_rate); torch's beta2_decay = -decay_rate <= 0
    "eps_scale": Range(),  # eps2, the floor of the parameter scale
    "clipping_threshold": Range(1.0),  # d >= 1 (PyTorch and optax check it)
    # Keras's gradient options (stage fields, not state: chosen once per recipe); 0 is refused by the stages.
    "clipnorm": Range(),
    "clipvalue": Range(),
    "global_clipnorm": Range(),
    "loss_scale_factor": Range(),
    # ademamix and prodigy
    "b3": _RATE,  # AdEMAMix's slow EMA; Prodigy's EMA of the distance sums
    "alpha": Range(),  # AdEMAMix: weight of the slow EMA
    "alpha_warmup": Range(1.0, optional=True),  # AdEMAMix: warmup lengths in steps; None: no warmup
    "b3_warmup": Range(1.0, optional=True),
    "d0": Range(),  # Prodigy: the initial distance estimate (0: d never moves)
    "d_coef": Range(),  # Prodigy: factor on the estimate
    "growth_rate": Range(1.0, optional=True),  # Prodigy: most d may grow per step; None (inf): unlimited
    # muon
    "consistent_rms": Range(optional=True),  # Liu et al.'s RMS factor; None: the width rule
    "adam_b1": _RATE,
    "adam_b2": _RATE,
    "adam_eps": Range(optional=True),
    "adam_weight_decay": Range(schedule=True, optional=True),
    "adam_learning_rate": Range(schedule=True, optional=True),
}

_ANY_NUMBER = Range(-math.inf)  # a hyperparameter this table does not know (a foreign stage's)


def state_float_dtype() -> np.dtype:
    """The dtype hyperparameters are kept in: float32, or float64 under ``jax.enable_x64``."""
    return np.dtype(jnp.asarray(0.0, dtype=float).dtype)


def _invalid(name: str, value: Any, why: str) -> ValueError:
    return ValueError(f"{name}={value!r} is invalid: {why}.")


def _real_scalar(name: str, value: Any, allowed: str) -> float:
    """``value`` as a Python float, or a ``ValueError`` saying why it is not a real scalar."""
    if isinstance(value, (bool, np.bool_)):
        raise _invalid(name, value, f"a bool is not a number; it must be {allowed}")
    if isinstance(value, (str, bytes)):
        raise _invalid(name, value, f"it must be {allowed}, not a string")
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        if np.shape(value) != ():
            raise _invalid(name, value, f"it must be a scalar ({allowed}), not an array of shape {np.shape(value)}")
        dtype = np.dtype(value.dtype)
        if dtype == np.bool_ or not (np.issubdtype(dtype, np.number)):
            raise _invalid(name, value, f"it must be {allowed}, not an array of dtype {dtype.name}")
        value = value.item()
    if isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real):
        raise _invalid(name, value, f"it must be {allowed}, not a complex number")
    if not isinstance(value, numbers.Real):
        raise _invalid(name, value, f"it must be {allowed}, not a {type(value).__name__}")
    return float(value)


def check_hyperparameter(name: str, value: Any, *, optional: bool | None = None, dtype: Any = None) -> None:
    """Raises ``ValueError`` unless ``value`` is a valid value of the hyperparameter ``name``.

    The range comes from :data:`HYPERPARAMETERS` (any finite number for a name
    it does not know). ``optional`` overrides whether ``None`` is allowed;
    ``dtype`` is the dtype the value will be stored in (default: the state's,
    :func:`state_float_dtype`). Traced values are not checked.
    """
    spec = HYPERPARAMETERS.get(name, _ANY_NUMBER)
    if optional is not None:
        spec = spec._replace(optional=optional)
    allowed = spec.describe()
    if value is None:
        if spec.optional:
            return
        raise _invalid(name, value, f"it must be {allowed}")
    if isinstance(value, Tracer):
        return
    if callable(value):
        if spec.schedule:
            return
        raise _invalid(name, value, f"it must be {allowed}, not a callable")
    number = _real_scalar(name, value, allowed)
    if math.isnan(number) or math.isinf(number):
        raise _invalid(name, value, f"it must be finite: {allowed}")
    upper_ok = number <= spec.high if spec.high_inclusive else number < spec.high
    if number < spec.low or not upper_ok:
        raise _invalid(name, value, f"it must be {allowed}")
    info = np.finfo(state_float_dtype() if dtype is None else dtype)
    if abs(number) > float(info.max):
        raise _invalid(name, value, f"it overflows the state's {info.dtype.name} (largest {info.max:.3g})")
    if number != 0 and abs(number) < float(info.smallest_normal):
        raise _invalid(
            name,
            value,
            f"it underflows the state's {info.dtype.name} (smallest normal {info.smallest_normal:.3g}): "
            "it would be stored as 0 or a denormal",
        )


def is_static_zero(value: Any) -> bool:
    """``True`` for ``None`` or a concrete Python/NumPy number equal to 0 (never for a JAX array).

    Factories leave out a stage whose hyperparameter is switched off this way.
    A JAX array (what ``optax.inject_hyperparams`` passes, traced under ``jit``)
    keeps the stage, so the state has one structure whatever the value.
    """
    if value is None:
        return True
    return isinstance(value, (numbers.Number, np.generic)) and not isinstance(value, bool) and value == 0


def is_concrete(value: Any) -> bool:
    """Whether ``value`` can be read as a Python number now (not traced, not a schedule)."""
    if isinstance(value, (np.ndarray, jax.Array)) and not isinstance(value, Tracer):
        return np.shape(value) == ()
    return isinstance(value, (numbers.Real, np.generic)) and not isinstance(value, bool)


def as_python_scalar(value: Any) -> Any:
    """A concrete 0-d NumPy/JAX array as the Python number it holds; anything else unchanged.

    Stages are frozen dataclasses compared and hashed by value; arrays are
    neither hashable nor comparable to a bool, so an argument such as
    ``learning_rate=jnp.array(1e-3)`` is stored as the float it holds. Traced
    values are left alone.
    """
    if isinstance(value, (np.ndarray, np.generic, jax.Array)) and not isinstance(value, Tracer):
        if np.shape(value) == ():
            return value.item()
    return value


def check_range(
    name: str,
    value: Any,
    low: float,
    high: float = math.inf,
    *,
    high_inclusive: bool = False,
) -> None:
    """Raises ``ValueError`` unless ``low <= value < high`` (or ``<= high``), for arguments outside the table.

    Traced values and ``None`` are not checked.
    """
    if value is None or isinstance(value, Tracer):
        return
    bracket = "]" if high_inclusive else ")"
    number = _real_scalar(name, value, f"a number in [{low}, {high}{bracket}")
    upper_ok = number <= high if high_inclusive else number < high
    if math.isnan(number) or number < low or not upper_ok:
        raise _invalid(name, value, f"it must be a number in [{low}, {high}{bracket}")


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}={value!r} is invalid: it must be one of {', '.join(map(repr, allowed))}.")


class TreeMismatchError(ValueError):
    """A tree (gradients, updates) whose structure or leaf shapes differ from the tree it must match."""


def check_same_structure(tree: Any, reference: Any, what: str, reference_what: str, *, shapes: bool = False) -> None:
    """Raises :class:`TreeMismatchError` showing both structures when ``tree`` does not match ``reference``.

    ``reference`` may hold subtrees where ``tree`` has leaves (quantised state).
    With ``shapes=True`` (``reference`` is parameter-shaped), a leaf whose shape
    differs is an error naming its path and both shapes: JAX would otherwise
    broadcast a ``(3, 1)`` gradient against a ``(3,)`` moment into ``(3, 3)``.
    """
    try:
        jax.tree.map(lambda *_: None, tree, reference)
    except (ValueError, TypeError) as error:
        raise TreeMismatchError(
            f"{what} do not match the {reference_what}.\n"
            f"  {what}: {jax.tree.structure(tree)}\n"
            f"  {reference_what}: {jax.tree.structure(reference)}\n"
            f"  ({error})"
        ) from None
    if not shapes:
        return
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    for (path, leaf), ref in zip(leaves, jax.tree.leaves(reference), strict=True):
        if np.shape(leaf) != np.shape(ref):
            # an integer, bool or float0 gradient reaches the stages as a float32 scalar (no gradient)
            stand_in = np.shape(leaf) == () and getattr(leaf, "dtype", None) == np.float32
            hint = STAND_IN_HINT if stand_in else ""
            raise TreeMismatchError(
                f"{what}{jax.tree_util.keystr(path)} has shape {tuple(np.shape(leaf))}, but the "
                f"{reference_what} has {tuple(np.shape(ref))} there: each leaf must have its parameter's shape{hint}."
            )


STAND_IN_HINT = (
    " (if it is an integer, bool or float0 array: those mean no gradient, for an integer parameter;"
    " a float parameter needs a float gradient)"
)


def conform(tree: Any, storage: Any, reference: Any, what: str) -> Any:
    """Checks ``tree`` against a stored moment's ``reference`` tree and returns it in the state's dtypes.

    Shapes must match (the error names the leaf path; ``reference`` is
    :func:`adamfx._src.storage.protocol.parameter_shaped`'s tree). For a storage
    that keeps one parameter-shaped array per leaf (``record`` is None) float
    leaves are widened to the stored dtype (:func:`promote_to`).
    """
    check_same_structure(tree, reference, what, "optimizer state (built by init)", shapes=True)
    return promote_to(tree, reference) if getattr(storage, "record", None) is None else tree


def promote_to(tree: Any, reference: Any) -> Any:
    """``tree``'s float leaves widened to at least the dtype of ``reference``'s (the dtype ``init`` chose).

    bfloat16 gradients for float32 params are computed as float32, so the
    moments keep the dtype ``init`` gave them. Never narrows; complex stays complex.
    """

    def leaf(x, ref):
        if not (jnp.issubdtype(x.dtype, jnp.inexact) and jnp.issubdtype(ref.dtype, jnp.inexact)):
            return x
        wide = jnp.promote_types(x.dtype, ref.dtype)
        return x if wide == x.dtype else x.astype(wide)

    return jax.tree.map(leaf, tree, reference)


# -- porting aids -----------------------------------------------------------------------------

#: Keyword arguments of PyTorch, Keras and optax optimizers: what adamfx calls them
#: (argument names) or what to use instead (a hint), and whose spelling it is.
PEER_SPELLINGS: dict[str, tuple[tuple[str, ...] | str, str]] = {
    "lr": (("learning_rate",), "PyTorch's lr"),
    "betas": (("b1", "b2"), "PyTorch's betas=(b1, b2)"),
    "beta_1": (("b1",), "Keras's beta_1"),
    "beta_2": (("b2",), "Keras's beta_2"),
    "beta1": (("b1",), "beta1"),
    "beta2": (("b2",), "beta2"),
    "epsilon": (("eps",), "Keras's epsilon"),
    "mask": (("weight_decay_mask",), "optax's mask"),
    "alpha": (("rho",), "PyTorch RMSprop's alpha"),
    "decay_rate": (("rho",), "decay_rate"),
    "accumulator_dtype": (("mu_dtype",), "optax's accumulator_dtype"),
    "decoupled_weight_decay": (("decoupled",), "PyTorch's decoupled_weight_decay"),
    "initial_accumulator": (("initial_accumulator_value",), "initial_accumulator"),
    "use_ema": ("wrap the optimizer: adamfx.with_ema(tx, ema_momentum)", "Keras's"),
    "ema_momentum": ("wrap the optimizer: adamfx.with_ema(tx, ema_momentum)", "Keras's"),
    "ema_overwrite_frequency": ("wrap the optimizer: adamfx.with_ema(tx, ema_overwrite_frequency=...)", "Keras's"),
    "gradient_accumulation_steps": ("wrap the optimizer: adamfx.multi_steps(tx, every_k)", "Keras's"),
    "foreach": ("not needed: the update is one jitted program; adamfx.fused(tx) runs it on flat buffers", "PyTorch's"),
    "fused": ("not an argument: wrap the optimizer, adamfx.fused(tx)", "PyTorch's"),
}


def unknown_keyword(factory: str, name: str, valid: list[str]) -> TypeError:
    """The ``TypeError`` for ``factory(name=...)``, naming the adamfx spelling when ``name`` is a peer's."""
    message = f"{factory}() got an unexpected keyword argument {name!r}"
    target, peer = PEER_SPELLINGS.get(name, ((), ""))
    if isinstance(target, str):
        return TypeError(f"{message} ({peer} {name}): {target}.")
    if target and all(t in valid for t in target):
        spelled = ", ".join(f"{t}=..." for t in target)
        return TypeError(f"{message}: that is {peer}; adamfx calls it {' and '.join(target)}: {factory}({spelled}).")
    close = difflib.get_close_matches(name, valid, n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else "."
    return TypeError(f"{message}{hint} Its arguments are: {', '.join(valid)}.")


def porting_aids(factory: Callable) -> Callable:
    """Wraps an optimizer factory so an unknown keyword names the adamfx argument to use.

    ``adam(lr=1e-3)`` raises ``TypeError: adam() got an unexpected keyword
    argument 'lr': that is PyTorch's lr; adamfx calls it learning_rate: adam(learning_rate=...).``
    The signature is the factory's (``inspect.signature`` and
    ``optax.inject_hyperparams`` see it unchanged).
    """
    valid = list(inspect.signature(factory).parameters)

    @functools.wraps(factory)
    def wrapper(*args, **kwargs):
        for name in kwargs:
            if name not in valid:
                raise unknown_keyword(factory.__name__, name, valid)
        return factory(*args, **kwargs)

    return wrapper
