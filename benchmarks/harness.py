"""Shared pieces of the speed benchmarks: interleaved timing, machine description, output files."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import jax

OUT = Path(__file__).resolve().parent / "out"


def interleaved(runners: dict[str, Callable[[], None]], samples: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per call of each runner, timed in turn (A B C A B C ...) so that load on
    a shared machine hits every contender alike. Each runner must block until done."""
    for _ in range(warmup):
        for run in runners.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(samples):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> float:
    """Interquartile range over the median: how noisy a measurement was."""
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return (q[2] - q[0]) / q[1] if q[1] else 0.0


def machine() -> dict:
    """What ran the benchmark: CPU model and count, load, devices, library versions, date."""
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
    }
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        info["cpu"] = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line), "")
    except (OSError, subprocess.SubprocessError):
        info["cpu"] = platform.processor()
    for name in ("optax", "flax", "torch"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    return info


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain-text table with right-aligned columns."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True))
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def bar_chart(path: Path, groups: dict[str, dict[str, float]], title: str, ylabel: str, log: bool = False) -> None:
    """Grouped bars: one group per case, one bar per contender (matplotlib, headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    contenders = sorted({c for bars in groups.values() for c in bars}, key=lambda c: list(_order(groups)).index(c))
    width = 0.8 / max(len(contenders), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups) + 2), 4))
    for i, contender in enumerate(contenders):
        xs = [g + i * width for g, bars in enumerate(groups.values()) if contender in bars]
        ys = [bars[contender] for bars in groups.values() if contender in bars]
        ax.bar(xs, ys, width, label=contender)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], list(groups), fontsize=8)
    ax.axhline(1.0, color="black", linewidth=0.6)
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _order(groups: dict[str, dict[str, float]]) -> dict[str, None]:
    order: dict[str, None] = {}
    for bars in groups.values():
        order.update(dict.fromkeys(bars))
    return order
