"""The training-loop examples run and print what they promise (slow: about a minute in all)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)  # the sharded example sets its own
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def accuracy(output: str) -> float:
    return float(re.findall(r"accuracy[^0-9]*([0-9.]+)", output)[-1])


@pytest.mark.slow
def test_linen_trainstate_example():
    assert accuracy(run_example("linen_trainstate.py")) > 0.9


@pytest.mark.slow
def test_nnx_accumulate_example():
    output = run_example("nnx_accumulate.py")
    assert "traced 1 time(s)" in output
    assert accuracy(output) > 0.9


@pytest.mark.slow
def test_sharded_example():
    output = run_example("sharded.py")
    plain, zero = (int(n.replace(",", "")) for n in re.findall(r"zero_axis=\S+\s+([0-9,]+) bytes", output))
    assert zero < plain / 2
    assert "its first moment: ('data', 'model')" in output
    assert accuracy(output) > 0.9


@pytest.mark.slow
def test_checkpoint_resume_example():
    output = run_example("checkpoint_resume.py")
    assert "bit-identical to the uninterrupted one: True" in output
    assert "does not match this optimizer" in output
