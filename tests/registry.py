"""The one registry of adamfx optimizers that the generic tests draw from.

Every optimizer x convention x variant is declared once, as an :class:`Entry`:
its factory, the convention, each hyperparameter argument with a valid value
(:data:`FACTORIES`), the conventions it has (:data:`CONVENTIONS_OF`), the
options that bring in its other stages (:data:`VARIANTS`), a second valid
value of each hyperparameter (:data:`OTHER_VALUES`) and the module of its
live-peer parity tests (:data:`PARITY`). A new optimizer registered here gets
every generic test with no special case in the test modules: bad input
(test_bad_input.py), ``optax.inject_hyperparams`` (test_inject_hyperparams.py),
checkpoints, sharding, recompilation, value equality, ``set_hyperparams``
(test_generic.py), ``fused`` (test_fused.py), ``sweep`` (test_sweep.py),
``mu_dtype``/``nu_dtype`` storage (test_dtypes.py); and test_registry.py fails
until it is registered and has a default-run parity case in every convention
(:data:`NO_PEER` says where a convention has no live peer, and why).
:data:`FLOAT32_STATE` and :data:`PARAMS_IN_STATE` name the state a storage dtype
does not reach, by design.

The allowed ranges in :data:`RANGES` are written down here from the peers'
documentation (PyTorch, Keras, optax), independently of adamfx's own table, so
the tests check that the library agrees with them.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp

import adamfx

CONVENTIONS = ("optax", "torch", "keras")


@dataclasses.dataclass(frozen=True)
class Range:
    """A real number in ``[low, high)`` (``[low, high]`` when ``high_inclusive``)."""

    low: float = 0.0
    high: float = math.inf
    high_inclusive: bool = False

    def below(self) -> float | None:
        """A value just outside the range at the bottom (negative for a range that starts at 0)."""
        return -0.5 if self.low == 0 else self.low - 1.0

    def above(self) -> float | None:
        """A value outside the range at the top, or ``None`` for an unbounded range."""
        if math.isinf(self.high):
            return None
        return self.high + 0.5 if self.high_inclusive else self.high


RATE = Range(0.0, 1.0)  # a moving-average rate: 1 never forgets
FRACTION = Range(0.0, 1.0, high_inclusive=True)
NONNEGATIVE = Range()

#: The allowed values of every hyperparameter argument (PyTorch's, Keras's and optax's checks,
#: and the maths: RAdam's rectification needs rho_t >= 4).
RANGES: Mapping[str, Range] = {
    "learning_rate": NONNEGATIVE,
    "b1": RATE,
    "b2": RATE,
    "rho": RATE,
    "eps": NONNEGATIVE,
    "eps_root": NONNEGATIVE,
    "decay": NONNEGATIVE,
    "lr_decay": NONNEGATIVE,
    "weight_decay": NONNEGATIVE,
    "momentum": FRACTION,
    "dampening": FRACTION,
    "momentum_decay": NONNEGATIVE,
    "threshold": Range(4.0),
    "initial_accumulator_value": NONNEGATIVE,
    # schedule_free_adamw / schedule_free_sgd (schedulefree: warmup_steps an int >= 0, weight_lr_power any power >= 0)
    "warmup_steps": NONNEGATIVE,
    "weight_lr_power": NONNEGATIVE,
    # ademamix and prodigy (optax.contrib, pytorch_optimizer AdEMAMix, prodigyopt Prodigy)
    "b3": RATE,
    "alpha": NONNEGATIVE,
    "alpha_warmup": Range(1.0),  # a number of steps (pytorch_optimizer's t_alpha_beta3 divides by it)
    "b3_warmup": Range(1.0),
    "d0": NONNEGATIVE,  # prodigyopt refuses 0; adamfx keeps the sums without 1/d0, so d0 = 0 is "d stays 0"
    "d_coef": NONNEGATIVE,
    "growth_rate": Range(1.0),  # a multiplicative limit on d's growth per step
    # adafactor: torch.optim.Adafactor checks beta2_decay <= 0, d >= 1, eps >= 0; optax: clipping_threshold >= 1
    "decay_rate": NONNEGATIVE,
    "clipping_threshold": Range(1.0),
    "eps_scale": NONNEGATIVE,
    # muon (torch.optim.Muon checks lr, momentum, weight_decay >= 0; the Adam leaves take AdamW's ranges)
    "consistent_rms": NONNEGATIVE,
    "adam_b1": RATE,
    "adam_b2": RATE,
    "adam_eps": NONNEGATIVE,
    "adam_weight_decay": NONNEGATIVE,
    "adam_learning_rate": NONNEGATIVE,
    "cautious_factor": FRACTION,  # lion, cautious: lion-pytorch asserts 0 <= cautious_factor <= 1
}


#: Arguments whose default is a number but that take ``None`` to switch something off, by factory name.
NONE_ALLOWED: Mapping[str, tuple[str, ...]] = {
    "adafactor": ("clipping_threshold",),  # optax: None disables the update clipping
}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One optimizer in one convention.

    ``hyperparams`` maps every hyperparameter argument of ``factory`` to a valid
    value; :meth:`build` makes the optimizer with them (and any overrides).
    """

    factory: Callable[..., Any]
    convention: str
    hyperparams: Mapping[str, Any]
    variant: str = ""  # a name from VARIANTS ("" is the plain optimizer)
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # the variant's arguments

    @property
    def name(self) -> str:
        return self.factory.__name__

    @property
    def id(self) -> str:
        return "-".join(part for part in (self.name, self.variant, self.convention) if part)

    def build(self, **overrides: Any):
        return self.factory(**{**self.hyperparams, **self.options, **overrides}, convention=self.convention)

    def build_as_the_state_holds(self, **values: Any):
        """Built with ``values`` the way ``set_hyperparams`` and ``sweep`` apply them to the state: where two
        groups share a name (muon's Adam group: ``adam_eps`` is its ``eps``), both get the value."""
        shared = {f"adam_{name}": value for name, value in values.items() if f"adam_{name}" in self.hyperparams}
        return self.build(**values, **shared)

    def accepts_none(self, name: str) -> bool:
        """``None`` is a documented value of ``name`` (it takes the convention's default or switches it off)."""
        optional = NONE_ALLOWED.get(self.factory.__name__, ())
        return inspect.signature(self.factory).parameters[name].default is None or name in optional


_ADAM = {"learning_rate": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "eps_root": 0.0, "decay": 0.0}

#: Each optimizer factory and a valid value of each of its hyperparameter arguments.
FACTORIES: Mapping[Callable[..., Any], Mapping[str, Any]] = {
    adamfx.adam: {**_ADAM, "weight_decay": 1e-2},
    adamfx.adamw: {**_ADAM, "weight_decay": 1e-2},
    adamfx.amsgrad: {**_ADAM, "weight_decay": 1e-2},
    adamfx.sgd: {"learning_rate": 1e-2, "momentum": 0.9, "dampening": 0.0, "decay": 0.0, "weight_decay": 1e-4},
    adamfx.rmsprop: {
        "learning_rate": 1e-2,
        "rho": 0.9,
        "eps": 1e-8,
        "momentum": 0.9,
        "decay": 0.0,
        "weight_decay": 1e-4,
    },
    adamfx.adadelta: {"learning_rate": 1.0, "rho": 0.9, "eps": 1e-6, "decay": 0.0, "weight_decay": 1e-4},
    adamfx.adagrad: {
        "learning_rate": 1e-2,
        "lr_decay": 0.0,
        "initial_accumulator_value": 0.1,
        "eps": 1e-10,
        "decay": 0.0,
        "weight_decay": 1e-4,
    },
    adamfx.nadam: {**_ADAM, "learning_rate": 2e-3, "momentum_decay": 4e-3, "weight_decay": 1e-4},
    adamfx.nadamw: {**_ADAM, "learning_rate": 2e-3, "momentum_decay": 4e-3, "weight_decay": 1e-4},
    adamfx.adamax: {"learning_rate": 2e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "decay": 0.0, "weight_decay": 1e-4},
    adamfx.adamaxw: {"learning_rate": 2e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "decay": 0.0, "weight_decay": 1e-4},
    adamfx.radam: {**_ADAM, "threshold": 5.0, "weight_decay": 1e-4},
    # schedule_free_adamw / schedule_free_sgd
    adamfx.schedule_free_adamw: {
        **{name: _ADAM[name] for name in ("b1", "b2", "eps", "decay")},
        "learning_rate": 0.0025,
        "warmup_steps": 10,
        "weight_decay": 1e-2,
        "weight_lr_power": 2.0,
    },
    adamfx.schedule_free_sgd: {
        "learning_rate": 1.0,
        "warmup_steps": 10,
        "b1": 0.9,
        "weight_decay": 1e-2,
        "weight_lr_power": 2.0,
        "decay": 0.0,
    },
    # adabelief, adopt (issue 12)
    adamfx.adabelief: {**_ADAM, "eps": 1e-16, "eps_root": 1e-16, "weight_decay": 1e-4},
    adamfx.adopt: {"learning_rate": 1e-3, "b1": 0.9, "b2": 0.9999, "eps": 1e-6, "decay": 0.0, "weight_decay": 1e-4},
    # ademamix and prodigy
    adamfx.ademamix: {
        **{k: v for k, v in _ADAM.items() if k != "eps_root"},
        # not the default 0.9999: optax.inject_hyperparams hands b3 over as float32, and float32(0.9999) is 6e-4
        # (relative) off in 1 - b3, more than the wrapped-vs-unwrapped tolerance; at 0.999 it is 6e-5 off
        "b3": 0.999,
        "alpha": 5.0,
        "alpha_warmup": 100,
        "b3_warmup": 100,
        "weight_decay": 1e-2,
    },
    adamfx.prodigy: {
        "learning_rate": 1.0,
        "b1": 0.9,
        "b2": 0.999,
        "b3": 0.99,
        "eps": 1e-8,
        "d0": 1e-6,
        "d_coef": 1.0,
        "weight_decay": 1e-2,
    },
    # adafactor
    adamfx.adafactor: {
        "learning_rate": 1e-2,
        "decay_rate": 0.8,
        "clipping_threshold": 1.0,
        "momentum": 0.9,
        "eps": 1e-30,
        "eps_scale": 1e-3,
        "weight_decay": 1e-4,
    },
    # muon: the names its two groups share (learning_rate, eps, weight_decay) get equal values in both, so
    # that hyperparams(state) reads one value for each without group=
    adamfx.muon: {
        "learning_rate": 2e-2,
        "momentum": 0.95,
        "eps": 1e-8,
        "weight_decay": 1e-2,
        "consistent_rms": 0.2,
        "adam_b1": 0.9,
        "adam_b2": 0.999,
        "adam_eps": 1e-8,
        "adam_weight_decay": 1e-2,
        "adam_learning_rate": 2e-2,
        "decay": 0.0,
    },
    # lion, lamb
    adamfx.lion: {"learning_rate": 1e-4, "b1": 0.9, "b2": 0.99, "decay": 0.0, "weight_decay": 1e-3},
    adamfx.lamb: {"learning_rate": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-6, "decay": 0.0, "weight_decay": 1e-2},
}

#: The conventions of the factories that do not have all three (an optimizer a peer lacks is not invented for it).
CONVENTIONS_OF: Mapping[Callable[..., Any], tuple[str, ...]] = {
    adamfx.schedule_free_sgd: ("optax", "torch"),  # schedule_free_sgd: Keras has none
    # adabelief, adopt (issue 12)
    adamfx.adabelief: ("optax", "torch"),
    adamfx.adopt: ("optax", "torch"),
    adamfx.ademamix: ("optax", "torch"),  # ademamix
    adamfx.prodigy: ("optax", "torch"),  # prodigy
    adamfx.lamb: ("optax", "keras"),  # lamb: PyTorch has no LAMB
}

#: The options that bring in an optimizer's other stages: factory -> {variant: (arguments, conventions or None = all)}.
VARIANTS: Mapping[Callable[..., Any], Mapping[str, tuple[Mapping[str, Any], tuple[str, ...] | None]]] = {
    adamfx.adam: {"amsgrad": ({"amsgrad": True}, None)},
    adamfx.sgd: {"nesterov": ({"nesterov": True}, None)},
    adamfx.rmsprop: {"centered": ({"centered": True}, None)},
    adamfx.radam: {"nesterov": ({"nesterov": True}, ("optax",))},
    # adabelief, adopt (issue 12)
    adamfx.adabelief: {"amsgrad-nesterov": ({"amsgrad": True, "nesterov": True}, ("optax",))},
    adamfx.adopt: {
        "nesterov": ({"nesterov": True}, ("optax",)),
        "cautious": ({"cautious": True, "b2": 0.99}, ("torch",)),
    },
    adamfx.lion: {"cautious": ({"cautious": True}, None)},  # lion
}

#: A second valid value of every hyperparameter (``set_hyperparams`` and ``sweep`` change to it).
OTHER_VALUES: Mapping[str, Any] = {
    "learning_rate": 3e-3,
    "b1": 0.8,
    "b2": 0.99,
    "rho": 0.8,
    "eps": 3e-5,
    "eps_root": 1e-9,
    "decay": 0.01,
    "lr_decay": 0.01,
    "weight_decay": 0.03,
    "momentum": 0.5,
    "dampening": 0.2,
    "momentum_decay": 0.01,
    "threshold": 4.0,
    "initial_accumulator_value": 0.2,
    "warmup_steps": 5,
    "weight_lr_power": 1.0,
    "b3": 0.95,
    "alpha": 3.0,
    "alpha_warmup": 50,
    "b3_warmup": 50,
    "d0": 1e-4,
    "d_coef": 0.5,
    "growth_rate": 1.5,
    "decay_rate": 0.7,
    "clipping_threshold": 2.0,
    "eps_scale": 1e-2,
    "consistent_rms": 0.3,
    "adam_b1": 0.8,
    "adam_b2": 0.99,
    "adam_eps": 3e-8,
    "adam_weight_decay": 0.03,
    "adam_learning_rate": 1e-2,
    "cautious_factor": 0.5,
}

#: The test module of each optimizer's live-peer parity (test_registry.py checks that the default run has a case
#: for every convention of it).
PARITY: Mapping[Callable[..., Any], str] = {
    adamfx.adam: "test_parity_adam",
    adamfx.adamw: "test_parity_adam",
    adamfx.amsgrad: "test_parity_adam",
    adamfx.sgd: "test_parity_sgd",
    adamfx.rmsprop: "test_parity_rmsprop",
    adamfx.adadelta: "test_parity_rmsprop",
    adamfx.adagrad: "test_parity_adagrad",
    adamfx.nadam: "test_parity_nadam",
    adamfx.nadamw: "test_parity_nadam",
    adamfx.adamax: "test_parity_adamax",
    adamfx.adamaxw: "test_parity_adamax",
    adamfx.radam: "test_parity_radam",
    adamfx.schedule_free_adamw: "test_parity_schedule_free",
    adamfx.schedule_free_sgd: "test_parity_schedule_free",
    adamfx.adabelief: "test_parity_adabelief",
    adamfx.adopt: "test_parity_adopt",
    adamfx.ademamix: "test_parity_ademamix",
    adamfx.prodigy: "test_parity_prodigy",
    adamfx.adafactor: "test_parity_adafactor",
    adamfx.muon: "test_parity_muon",
    adamfx.lion: "test_parity_lion",
    adamfx.lamb: "test_parity_lamb",
}


#: The optimizers that keep state in the compute dtype (float32 for bfloat16 params) by design, and which.
FLOAT32_STATE: Mapping[Callable[..., Any], str] = {
    adamfx.prodigy: "s, the d-weighted gradient sum (stages/distance.py)",
    adamfx.adafactor: "the factored second moment's row, column and full statistics",
}

#: The optimizers whose state holds a copy of the params (in the params' dtype, whatever mu_dtype/nu_dtype say).
PARAMS_IN_STATE: Mapping[Callable[..., Any], str] = {
    adamfx.schedule_free_adamw: "z, the base sequence",
    adamfx.schedule_free_sgd: "z, the base sequence",
    adamfx.prodigy: "p0, the initial params (the origin of the distance estimate)",
}

#: The optimizer x conventions that have no live peer, and why (test_registry.py accepts them without parity).
NO_PEER: Mapping[tuple[Callable[..., Any], str], str] = {
    (adamfx.adamaxw, "torch"): "PyTorch has no AdamaxW: torch.optim.Adamax decays coupled only",
}


def conventions_of(factory: Callable[..., Any]) -> tuple[str, ...]:
    return CONVENTIONS_OF.get(factory, CONVENTIONS)


#: Every optimizer in every convention it has, plain (the generic tests of hyperparameter values draw from these).
OPTIMIZERS: tuple[Entry, ...] = tuple(
    Entry(factory, convention, hyperparams)
    for factory, hyperparams in FACTORIES.items()
    for convention in conventions_of(factory)
)

#: :data:`OPTIMIZERS` and every variant in each of its conventions (the generic tests of behaviour draw from these).
ALL: tuple[Entry, ...] = OPTIMIZERS + tuple(
    Entry(factory, convention, FACTORIES[factory], variant, options)
    for factory, variants in VARIANTS.items()
    for variant, (options, only) in variants.items()
    for convention in only or conventions_of(factory)
)


def runs_by_default(entry: Entry) -> bool:
    """One plain entry per optimizer runs by default, the conventions taken in turn (all three covered)."""
    index = list(FACTORIES).index(entry.factory)
    conventions = conventions_of(entry.factory)
    return not entry.variant and entry.convention == conventions[index % len(conventions)]


def cases(entries: tuple[Entry, ...] = ALL, fast: Callable[[Entry], bool] = runs_by_default) -> list[Any]:
    """``entries`` as pytest params with readable ids, the ones ``fast`` does not pick marked slow."""
    import pytest

    return [pytest.param(e, id=e.id, marks=() if fast(e) else pytest.mark.slow) for e in entries]


def params() -> dict[str, jnp.ndarray]:
    """A small parameter tree: a matrix, a vector and a scalar."""
    return {"w": jnp.ones((2, 3)), "b": jnp.zeros(3), "s": jnp.asarray(0.5)}


def entry_hyperparams() -> list[tuple[Entry, str]]:
    """Every (optimizer, hyperparameter argument) pair, for ``pytest.mark.parametrize``."""
    return [(entry, name) for entry in OPTIMIZERS for name in entry.hyperparams]
