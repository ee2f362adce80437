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


@pytest.mark.slow
def test_every_optimizer_learns_the_digits_at_its_tuned_rate(example):
    results = example.main(epochs=30)
    for name in example.OPTIMIZERS:
        assert results[name, "tuned"]["test_acc"] >= 0.9, name
