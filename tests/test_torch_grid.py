"""PyTorch's own optimizer configuration grid, through ``convention="torch"``, against live PyTorch.

The configurations are read from the installed wheel: the ``optim_inputs_func_*``
functions of ``torch/testing/_internal/common_optimizers.py`` (the inputs of
PyTorch's ``OptimizerInfo`` tests) for Adam, AdamW, SGD, Adagrad, RMSprop,
Adadelta, NAdam, Adamax and RAdam, with the CUDA-only configurations included
(``device="cuda"`` only selects the list; everything runs on the CPU). Each runs
``STEPS`` steps of the multi-leaf problem of ``tests/peers.py`` on both sides.

``foreach``, ``fused``, ``capturable`` and ``differentiable`` pick PyTorch's
implementation, not its maths, and adamfx has no such flags: they are dropped
on *both* sides (a capturable configuration runs as the plain one). Tensor
``lr``/``betas`` become the numbers they hold. Every other key is translated to
adamfx's name (``TORCH_NAMES``); a key without a translation fails the test.

By default the ``maximize`` configurations (one per optimizer, float64) run;
the whole grid in both dtypes is ``slow``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types
import unittest
from typing import Any

import numpy as np
import pytest

import adamfx
from tests import peers

STEPS = 300
#: torch.optim class -> (adamfx factory, its optim_inputs_func_* name)
OPTIMIZERS = {
    "Adam": ("adam", "adam"),
    "AdamW": ("adamw", "adamw"),
    "SGD": ("sgd", "sgd"),
    "Adagrad": ("adagrad", "adagrad"),
    "RMSprop": ("rmsprop", "rmsprop"),
    "Adadelta": ("adadelta", "adadelta"),
    "NAdam": ("nadam", "nadam"),
    "Adamax": ("adamax", "adamax"),
    "RAdam": ("radam", "radam"),
}
IMPLEMENTATION_FLAGS = ("foreach", "fused", "capturable", "differentiable")
TORCH_NAMES = {  # torch keyword -> adamfx keyword
    "lr": "learning_rate",
    "alpha": "rho",
    "decoupled_weight_decay": "decoupled",
    **{name: name for name in ("weight_decay", "amsgrad", "maximize", "momentum", "dampening", "nesterov", "eps")},
    **{name: name for name in ("centered", "rho", "lr_decay", "initial_accumulator_value", "momentum_decay")},
}


def _common_optimizers():
    """torch's module; its test utilities import ``expecttest`` (a test-only package not installed here),
    which the configuration functions never use: a stand-in module is provided for the import only."""
    stand_in = "expecttest" not in sys.modules and importlib.util.find_spec("expecttest") is None
    if stand_in:
        sys.modules["expecttest"] = types.SimpleNamespace(TestCase=unittest.TestCase)
    try:
        return importlib.import_module("torch.testing._internal.common_optimizers")
    finally:
        if stand_in:
            del sys.modules["expecttest"]


def _number(value: Any) -> Any:
    return float(value) if hasattr(value, "item") else value


@functools.cache
def grid() -> dict[str, tuple[str, dict]]:
    """``id -> (torch class, torch kwargs without the implementation flags)``."""
    module = _common_optimizers()
    cases = {}
    for torch_name, (_, func) in OPTIMIZERS.items():
        for index, config in enumerate(getattr(module, f"optim_inputs_func_{func}")("cuda")):
            kwargs = {k: v for k, v in config.kwargs.items() if k not in IMPLEMENTATION_FLAGS}
            if "lr" in kwargs:
                kwargs["lr"] = _number(kwargs["lr"])
            if "betas" in kwargs:
                kwargs["betas"] = tuple(_number(b) for b in kwargs["betas"])
            cases[f"{torch_name}-{index}-{config.desc.replace(' ', '_')}"] = (torch_name, kwargs)
    return cases


def ours(torch_name: str, kwargs: dict):
    kwargs = dict(kwargs)
    betas = kwargs.pop("betas", None)
    unknown = set(kwargs) - set(TORCH_NAMES)
    assert not unknown, f"torch's grid has keys without an adamfx translation: {unknown}"
    translated = {TORCH_NAMES[k]: v for k, v in kwargs.items()}
    if betas is not None:
        translated["b1"], translated["b2"] = betas
    return getattr(adamfx, OPTIMIZERS[torch_name][0])(convention="torch", **translated)


def _first_maximize_per_optimizer() -> set[str]:
    chosen = {}
    for case_id, (torch_name, kwargs) in grid().items():
        if kwargs.get("maximize"):
            chosen.setdefault(torch_name, case_id)
    return set(chosen.values())


FAST = _first_maximize_per_optimizer()
CASES = [
    pytest.param(case_id, dtype, id=f"{case_id}-{np.dtype(dtype).name}", marks=marks)
    for case_id in grid()
    for dtype in (np.float64, np.float32)
    for marks in [() if case_id in FAST and dtype == np.float64 else pytest.mark.slow]
]


def test_grid_is_read_from_torch():
    assert len(grid()) >= 58  # torch 2.13: 87 configurations with the CUDA-only ones
    assert {torch_name for torch_name, _ in grid().values()} == set(OPTIMIZERS)
    assert len(FAST) == len(OPTIMIZERS), "every optimizer has a maximize configuration"


@pytest.mark.parametrize(("case_id", "dtype"), CASES)
def test_matches_torch(case_id, dtype):
    torch_name, kwargs = grid()[case_id]
    problem = peers.make_problem(dtype)
    expected = peers.run_torch(torch_name, kwargs, problem, STEPS, dtype)
    actual = peers.run_transform(ours(torch_name, kwargs), problem, STEPS, dtype)
    # torch's small learning rates (Adadelta's lr 1e-3) move the params by ~2e-3 in STEPS steps:
    # still 1e9 times the float64 tolerance
    assert np.max(np.abs(expected[-1] - expected[0])) > 1e-3, "the problem must move the params"
    peers.assert_matches_peer(actual, expected, dtype, lambda: peers.run_torch(torch_name, kwargs, problem, STEPS))
