"""Every ```python block of README.md, CONTRIBUTING.md and docs/*.md runs as written.

The blocks of one page run in order in one namespace, as a reader types them into one Python session: a later
block may use what an earlier block of the same page defined, and nothing else (no ``model`` or ``path`` left
for the reader to imagine). Each page runs in a fresh temporary working directory. A block that imports a package
that is not installed (flax, keras, orbax) ends its page's run there, as a skip naming the package.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks(page: Path) -> list[tuple[int, str]]:
    """(line number, source) of each ```python block of the page."""
    text = page.read_text()
    return [(text[: m.start()].count("\n") + 2, m.group(1)) for m in BLOCK.finditer(text)]


def imported_packages(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def missing_package(sources: list[str]) -> str | None:
    for name in sorted(set().union(*map(imported_packages, sources))):
        if importlib.util.find_spec(name) is None:
            return name
    return None


def test_every_page_is_collected_and_the_guides_have_snippets():
    assert len(PAGES) >= 8, PAGES
    with_code = [page.name for page in PAGES if blocks(page)]
    assert {"README.md", "quickstart.md", "training.md", "storage.md", "speed.md", "porting.md"} <= set(with_code)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_snippets_run(page, tmp_path, monkeypatch, capsys):
    found = blocks(page)
    if not found:
        pytest.skip("no python blocks")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(page)])
    module = types.ModuleType(f"snippets_{page.stem.replace('-', '_')}")  # a real module: dataclasses look it up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for line, source in found:
        missing = missing_package([source])
        if missing:  # this block and the ones after it (which may use its names) need the package
            pytest.skip(f"the blocks from line {line} on need {missing}, which is not installed")
        code = compile(source, f"{page.relative_to(ROOT)}:{line}", "exec", dont_inherit=True)  # no __future__ of ours
        exec(code, module.__dict__)
    capsys.readouterr()
