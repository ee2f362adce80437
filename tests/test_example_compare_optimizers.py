"""examples/compare_optimizers.py prints its table and writes its plot; every optimizer learns the digits."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).parents[1] / "examples"


@pytest.fixture
def example(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))  # the example imports the flagship's model and data
    spec = importlib.util.spec_from_file_location("compare_optimizers", EXAMPLES / "compare_optimizers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "OUT", tmp_path)
    yield module
    sys.modules.pop("digits_mlp", None)


def test_prints_the_table_and_saves_the_plot(example, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(example, "OPTIMIZERS", ("sgd", "radam"))
    results = example.main(epochs=3)
    assert set(results) == {(n, s) for n in ("sgd", "radam") for s in ("defaults", "tuned")}
    out = capsys.readouterr().out
    assert "train loss" in out and "test acc" in out and "ms/epoch" in out
    assert (tmp_path / "compare_optimizers.png").stat().st_size > 10_000


def test_every_optimizer_of_the_library_has_a_tuned_rate(example):
    import adamfx

    assert set(example.TUNED) == set(example.OPTIMIZERS)
    assert all(rate in example.GRID for rate in example.TUNED.values())
    new = {"lion", "lamb", "adabelief", "adopt", "ademamix", "prodigy", "schedule_free_adamw", "schedule_free_sgd"}
    assert new | {"muon", "adafactor"} <= set(example.OPTIMIZERS)
    assert all(hasattr(adamfx, name) for name in example.OPTIMIZERS)
    assert example.VARIANTS <= set(adamfx.OPTIMIZERS)  # a renamed variant would otherwise slip into the runs


def test_the_vmapped_sweep_picks_a_rate_of_the_grid(example, monkeypatch, capsys):
    monkeypatch.setattr(example, "GRID", (1e-3, 1e-1, 10.0))
    best = example.sweep(epochs=2, names=("sgd", "schedule_free_sgd"))
    assert best == {"sgd": 1e-1, "schedule_free_sgd": 1e-1}  # 1e-3 barely moves in 2 epochs, 10 diverges
    assert "schedule_free_sgd" in capsys.readouterr().out


@pytest.mark.slow
def test_every_optimizer_learns_the_digits_at_its_tuned_rate(example):
    results = example.main(epochs=30)
    for name in example.OPTIMIZERS:
        assert results[name, "tuned"]["test_acc"] >= 0.9, name
