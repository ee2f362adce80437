"""``adamfx.__all__`` is exactly the public names ``adamfx/__init__.py`` imports, each documented."""

import types

import adamfx


def _public_names():
    """Every name bound in ``adamfx`` that is not private, not a submodule and not ``__version__``."""
    return {
        name
        for name, value in vars(adamfx).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }


def test_all_equals_the_public_names():
    # (sorted isort-style, constants first: ruff's RUF022 checks that)
    assert len(adamfx.__all__) == len(set(adamfx.__all__)), "a name is listed twice"
    assert set(adamfx.__all__) == _public_names()


def test_every_public_name_has_a_docstring():
    undocumented = [name for name in adamfx.__all__ if not (getattr(adamfx, name).__doc__ or "").strip()]
    assert not undocumented
