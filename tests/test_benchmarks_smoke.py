"""The benchmarks answer --help without running, and run end to end in --quick mode (tiny sizes; this checks that they
work, not how fast)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The scripts (a ``__main__`` block); harness.py, models.py and lowbit_configs.py are modules they share.
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if 'if __name__ == "__main__":' in p.read_text())


def test_the_scripts_are_found():
    assert {"step_speed.py", "memory.py", "hyperparam_changes.py", "zero_memory.py"} <= set(SCRIPTS)


def test_every_benchmark_prints_usage_with_help_and_documents_quick():
    """``--help`` exits 0 with the usage and a ``--quick`` option, and writes nothing (no benchmark ran)."""
    env = {**os.environ, "XLA_FLAGS": ""}
    out_dir = ROOT / "benchmarks" / "out"
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out_dir.glob("*")) if out_dir.exists() else []
    runs = {
        name: subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks" / name), "--help"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in SCRIPTS
    }
    for name, run in runs.items():
        out, err = run.communicate(timeout=300)  # the imports only (jax, flax, torch), even on a loaded machine
        assert run.returncode == 0, f"{name} --help: {err[-2000:]}"
        assert out.startswith("usage:") and "--quick" in out, f"{name} --help printed:\n{out}"
    after = sorted((p.name, p.stat().st_mtime_ns) for p in out_dir.glob("*")) if out_dir.exists() else []
    assert after == before


def run_script(name: str, out: Path, *args: str) -> dict:
    env = {**os.environ, "XLA_FLAGS": ""}  # one CPU device, as a user runs it
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), "--quick", "--out", str(out), *args],
        check=True,
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=600,
    )
    return json.loads((out / name.replace(".py", ".json")).read_text())


def test_step_speed_quick(tmp_path):
    payload = run_script("step_speed.py", tmp_path)
    rows = payload["results"]
    contenders = {r["contender"] for r in rows}
    assert {"adamfx.adam", "adamfx.fused(adam)", "adamfx.adam flat", "optax.adam", "floor"} <= contenders
    assert {r["mode"] for r in rows} == {"call", "scan"}
    assert all(r["median_s"] > 0 and r["vs optax.adam"] > 0 for r in rows)
    assert (tmp_path / "step_speed_call.png").stat().st_size > 0
    assert (tmp_path / "step_speed_scan.png").stat().st_size > 0


@pytest.mark.slow
def test_train_step_quick(tmp_path):
    payload = run_script("train_step.py", tmp_path)
    losses = [r["last_loss"] for r in payload["results"] if "adam" in r["contender"]]
    assert max(losses) - min(losses) < 1e-3 * max(losses)  # same model, data and steps
    assert all(r["model"]["leaves"] >= 200 for r in payload["results"])


@pytest.mark.slow
def test_compile_time_tiny(tmp_path):
    payload = run_script(
        "compile_time.py", tmp_path, "--leaves", "4", "8", "--transformer-leaves", "16", "--configs", "bf16", "int8"
    )
    results = payload["results"]
    assert set(results) == {"4x64", "8x64", "transformer:16"}
    for row in results.values():
        assert set(row) == {"optax.adam", "bf16", "int8"}
        assert all(r["total_s"] > 0 and r["cpu_s"] > 0 and r["hlo_ops"] > 0 for r in row.values())
    assert (tmp_path / "compile_time.png").stat().st_size > 0
    command = [sys.executable, str(ROOT / "benchmarks" / "compile_time.py"), "--step-speed", "--out", str(tmp_path)]
    subprocess.run([*command, "--step-size", "4096", "--steps", "2"], check=True, cwd=ROOT, capture_output=True)
    steps = json.loads((tmp_path / "lowbit_step.json").read_text())["results"]
    assert set(steps) == {"fp32", "bf16", "int8", "factored"} and steps["fp32"]["ratio"] == 1.0
    tree_command = [*command, "--step-tree", "transformer:16", "--steps", "2"]
    subprocess.run(tree_command, check=True, cwd=ROOT, capture_output=True)
    tree_steps = json.loads((tmp_path / "tree_step.json").read_text())["results"]
    assert "fused int8 pack 2^16" in tree_steps and tree_steps["adam"]["ratio"] == 1.0
    assert all(row["median_s"] > 0 and row["compile_cpu_s"] > 0 for row in tree_steps.values())
