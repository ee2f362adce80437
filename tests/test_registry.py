"""The registry is complete: every public optimizer is in it, and each of its conventions has a default-run parity case.

A public optimizer factory is a name in ``adamfx.__all__`` that takes ``convention=``. Parity
coverage is read from the parametrisations of the module ``registry.PARITY`` names: a case covers
an optimizer x convention when its id (or test name) holds the convention and, in a module of
several optimizers, the optimizer's name -- and nothing marks it slow.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import re

import pytest

import adamfx
from tests import registry


def public_factories() -> set[str]:
    return {
        name
        for name in adamfx.__all__
        if inspect.isfunction(getattr(adamfx, name))
        and "convention" in inspect.signature(getattr(adamfx, name)).parameters
    }


def test_every_public_optimizer_is_registered():
    registered = {factory.__name__ for factory in registry.FACTORIES}
    assert public_factories() - registered == set(), "register these in tests/registry.py (see CONTRIBUTING.md)"
    assert registered - public_factories() == set()


def test_adamfx_optimizers_names_every_public_optimizer_once():
    """``adamfx.OPTIMIZERS``, the list the examples and benchmarks draw from, is the public factories, no more."""
    assert len(adamfx.OPTIMIZERS) == len(set(adamfx.OPTIMIZERS)), "a name is listed twice"
    assert set(adamfx.OPTIMIZERS) == public_factories(), "add the new optimizer to adamfx/_src/optimizers/__init__.py"


def test_the_tables_name_registered_optimizers_only():
    for table in (registry.CONVENTIONS_OF, registry.VARIANTS, registry.PARITY):
        assert set(table) <= set(registry.FACTORIES)
    assert set(registry.PARITY) == set(registry.FACTORIES), "every optimizer names its parity module"
    names = {name for hyperparams in registry.FACTORIES.values() for name in hyperparams}
    assert names <= set(registry.RANGES) and names <= set(registry.OTHER_VALUES)


def test_ids_are_unique_and_each_optimizer_runs_by_default_in_one_convention():
    ids = [entry.id for entry in registry.ALL]
    assert len(ids) == len(set(ids))
    fast = [entry.factory for entry in registry.ALL if registry.runs_by_default(entry)]
    assert sorted(f.__name__ for f in fast) == sorted(f.__name__ for f in registry.FACTORIES)


def _is_slow(marks) -> bool:
    return any(getattr(mark, "name", None) == "slow" for mark in marks)


def _fast_labels(mark) -> list[str]:
    """The labels (id, else the values joined by '-') of one parametrize mark's cases that are not slow."""
    ids = mark.kwargs.get("ids")
    labels = []
    for i, value in enumerate(mark.args[1]):
        values, marks, given = (value.values, value.marks, value.id) if hasattr(value, "marks") else (value, (), None)
        values = values if isinstance(values, tuple) else (values,)
        if _is_slow(marks):
            continue
        label = given or (ids[i] if isinstance(ids, (list, tuple)) else "-".join(map(str, values)))
        labels.append(label)
    return labels


def default_parity_cases(module_name: str) -> list[str]:
    """``test_name[label]`` of every case of ``tests/<module_name>.py`` that the default run does not skip."""
    module = importlib.import_module(f"tests.{module_name}")
    if _is_slow(getattr(module, "pytestmark", [])):
        return []
    found = []
    for name, function in inspect.getmembers(module, inspect.isfunction):
        marks = getattr(function, "pytestmark", [])
        if not name.startswith("test") or _is_slow(marks):
            continue
        grids = [_fast_labels(mark) for mark in marks if mark.name == "parametrize"]
        found += [f"{name}[{'-'.join(labels)}]" for labels in itertools.product(*grids)]
    return found


def covers(case: str, factory, convention: str, module_name: str) -> bool:
    tokens = set(re.split(r"[-_\[\]]", case))
    family = module_name.removeprefix("test_parity_")
    names = {factory.__name__, factory.__name__.removeprefix(family + "_")}
    single = [f for f, m in registry.PARITY.items() if m == module_name] == [factory]
    return convention in tokens and (single or bool(names & set(case.replace("[", "-").split("-"))))


@pytest.mark.parametrize("entry", registry.OPTIMIZERS, ids=[entry.id for entry in registry.OPTIMIZERS])
def test_the_default_run_has_a_parity_case_for_every_optimizer_and_convention(entry):
    if (entry.factory, entry.convention) in registry.NO_PEER:
        pytest.skip(registry.NO_PEER[entry.factory, entry.convention])
    module_name = registry.PARITY[entry.factory]
    found = default_parity_cases(module_name)
    assert any(covers(case, entry.factory, entry.convention, module_name) for case in found), (module_name, found)
