"""The documentation: every public name is in the API reference and documented; the site builds without warnings."""

from __future__ import annotations

import doctest
import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import adamfx

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))
import apiref  # noqa: E402  (docs/_ext: the extension that writes the reference)


def test_the_reference_places_every_public_name_exactly_once():
    placed = [name for names in apiref.sections().values() for name in names]
    assert sorted(placed) == sorted(adamfx.__all__)
    assert apiref.MARKER in (DOCS / "api.md").read_text()
    text = apiref.reference()
    for name in adamfx.__all__:
        assert re.search(rf"^\.\. (autofunction|autoclass|py:data):: (adamfx\.)?{name}$", text, re.M), name


@pytest.mark.parametrize("name", adamfx.__all__)
def test_every_public_name_has_a_docstring_of_its_own(name):
    doc = apiref.docstring(name)
    assert len(doc.split()) >= 5, f"adamfx.{name} has no docstring (data: a #: comment where it is assigned)"
    obj = getattr(adamfx, name)
    if inspect.isclass(obj) and obj.__module__.startswith("adamfx"):
        assert "__doc__" in vars(obj) and obj.__doc__, f"adamfx.{name} inherits its docstring"


@pytest.mark.parametrize("name", adamfx.__all__)
def test_every_public_name_has_a_doctest_that_checks_a_value(name):
    data = apiref.kind(name) == "data"
    if not data and not getattr(adamfx, name).__module__.startswith("adamfx"):
        pytest.skip(f"adamfx.{name} is optax's own type (optax documents it)")
    parser, text = doctest.DocTestParser(), apiref.docstring(name)
    assert any(example.want.strip() for example in parser.get_examples(text)), f"adamfx.{name}: no checked doctest"
    if data:  # --doctest-modules does not read the #: comment of a data name: run its doctest here
        report: list[str] = []
        runner = doctest.DocTestRunner()
        runner.run(parser.get_doctest(text, {}, name, None, 0), out=report.append)
        assert runner.failures == 0, "".join(report)


def test_the_guides_are_in_the_table_of_contents():
    index = (DOCS / "index.md").read_text()
    pages = sorted(p.stem for p in DOCS.glob("*.md") if p.stem != "index")
    assert all(f"\n{page}\n" in index for page in pages), pages


def test_the_porting_guide_lists_every_argument_of_the_optimizers_it_tables():
    text = (DOCS / "porting.md").read_text()
    rows = re.findall(r"^\| `(\w+)\(` \| (.*) \|$", text, re.M)
    assert len(rows) >= 12
    shared = re.search(r"besides the shared (.*?)\) \|", text).group(1)
    for name, listed in rows:
        arguments = set(inspect.signature(getattr(adamfx, name)).parameters)
        missing = arguments - set(re.findall(r"`(\w+)`", listed + shared))
        assert not missing, f"docs/porting.md: {name} lacks {sorted(missing)}"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("sphinx") is None, reason="needs the docs extra (sphinx, myst-parser)")
def test_the_site_builds_with_warnings_as_errors(tmp_path):
    out = tmp_path / "html"
    build = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(out)]
    result = subprocess.run(build, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    api = (out / "api.html").read_text()
    for name in adamfx.__all__:
        assert f'id="adamfx.{name}"' in api, name
    assert "mathjax" in (out / "quickstart.html").read_text().lower()  # the maths is rendered
