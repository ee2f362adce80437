"""The flagship example reaches its promised accuracy and writes its plot."""

from __future__ import annotations

import importlib.util
import pathlib

EXAMPLES = pathlib.Path(__file__).parents[1] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_digits_mlp_reaches_95_percent_and_saves_the_plot(tmp_path, monkeypatch):
    example = load("digits_mlp")
    monkeypatch.setattr(example, "OUT", tmp_path)
    assert example.main(epochs=40) >= 0.95
    assert (tmp_path / "digits_mlp_loss.png").stat().st_size > 10_000


def test_keras_fit_trains_with_adamfx_fp32_and_int8_state(capsys):
    example = load("keras_fit")
    results = example.main(epochs=3)
    accuracy = {name: value[0] for name, value in results.items()}
    state_bytes = {name: value[1] for name, value in results.items()}
    assert min(accuracy.values()) >= 0.8, accuracy
    assert abs(accuracy["adamfx.adam fp32 state"] - accuracy["keras.optimizers.Adam(1e-3)"]) <= 0.01
    assert state_bytes["adamfx.adam int8 state"] < 0.3 * state_bytes["adamfx.adam fp32 state"]
    assert "int8 state / fp32 state" in capsys.readouterr().out
