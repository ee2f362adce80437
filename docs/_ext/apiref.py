"""Sphinx extension: the API reference lists every name of ``adamfx.__all__``, generated at build time.

``docs/api.md`` holds the line ``<!-- adamfx-api -->``; on reading that page this extension replaces it with one
section per role (the ``adamfx._src`` package a name comes from: optimizers, stages, storage, ...), each an
autosummary table followed by the autodoc entries. A name added to ``adamfx.__all__`` appears without an edit here;
``tests/test_docs.py`` checks that every public name is placed and documented.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from typing import Any

MARKER = "<!-- adamfx-api -->"

# (package under adamfx._src, heading); a name whose object comes from elsewhere (optax's base types) is "core".
SECTIONS = [
    ("optimizers", "Optimizers"),
    ("stages", "Stages"),
    ("storage", "State storage"),
    ("execution", "Execution: fused, flat, sharding"),
    ("training", "Training: wrappers, EMA, checkpoints, sweeps"),
    ("core", "Core: chain, stages, hyperparameters in the state"),
]


def _src_modules() -> list[Any]:
    import adamfx._src as src

    names = [info.name for info in pkgutil.walk_packages(src.__path__, "adamfx._src.")]
    return [importlib.import_module(name) for name in sorted(names)]


def defining_module(name: str) -> str:
    """The module that defines ``adamfx.<name>``: its ``__module__``, or for data the module that assigns it."""
    import adamfx

    obj = getattr(adamfx, name)
    if inspect.isclass(obj) or callable(obj):
        return getattr(obj, "__module__", "") or ""
    for module in _src_modules():
        if getattr(module, name, None) is obj:
            return module.__name__
    return ""


def role(name: str) -> str:
    parts = defining_module(name).split(".")
    if parts[:2] == ["adamfx", "_src"] and len(parts) > 2 and parts[2] in dict(SECTIONS):
        return parts[2]
    return "core"


def kind(name: str) -> str:
    import adamfx

    obj = getattr(adamfx, name)
    if inspect.isclass(obj):
        return "class"
    if callable(obj):
        return "function"
    return "data"


def data_doc(name: str) -> str:
    """The ``#:`` comment lines just above the assignment that defines a data name, in its module's source."""
    module = defining_module(name)
    if not module:
        return ""
    lines = inspect.getsource(importlib.import_module(module)).splitlines()
    assignment = re.compile(rf"^{re.escape(name)}\s*(:[^=]*)?=")
    for i, line in enumerate(lines):
        if assignment.match(line):
            comments: list[str] = []
            while i > 0 and lines[i - 1].startswith("#:"):
                i -= 1
                comments.insert(0, lines[i][2:].strip())
            return "\n".join(comments)
    return ""


def docstring(name: str) -> str:
    """What the reference shows for ``adamfx.<name>`` as its description."""
    import adamfx

    if kind(name) == "data":
        return data_doc(name)
    return inspect.getdoc(getattr(adamfx, name)) or ""


def sections() -> dict[str, list[str]]:
    """Every public name, grouped by role in the order of ``SECTIONS``; within a role, as in ``__all__``."""
    import adamfx

    grouped: dict[str, list[str]] = {key: [] for key, _ in SECTIONS}
    for name in adamfx.__all__:
        grouped[role(name)].append(name)
    return grouped


def entry(name: str) -> list[str]:
    import adamfx

    if kind(name) == "class":
        own = getattr(getattr(adamfx, name), "__module__", "").startswith("adamfx")
        return [f".. autoclass:: adamfx.{name}", *(["   :members:"] if own else []), ""]
    if kind(name) == "function":
        return [f".. autofunction:: adamfx.{name}", ""]
    value = repr(getattr(adamfx, name))
    body = [f"   {line}" for line in data_doc(name).splitlines()]
    return [f".. py:data:: {name}", "", *body, "", "   Value::", "", f"      {value}", ""]


def reference() -> str:
    """The reST text that replaces the marker: per role a heading, an autosummary table and the entries."""
    headings = dict(SECTIONS)
    lines = ["```{eval-rst}", ".. currentmodule:: adamfx", ""]
    for key, names in sections().items():
        if not names:
            continue
        title = headings[key]
        lines += [title, "-" * len(title), "", ".. autosummary::", ""]
        lines += [f"   {name}" for name in names if kind(name) != "data"]
        lines.append("")
        for name in names:
            lines += entry(name)
    lines.append("```")
    return "\n".join(lines)


def _on_source_read(app, docname: str, source: list[str]) -> None:
    if MARKER in source[0]:
        source[0] = source[0].replace(MARKER, reference())


def setup(app):
    app.connect("source-read", _on_source_read)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
