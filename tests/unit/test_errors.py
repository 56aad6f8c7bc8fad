"""The error classes: named by what went wrong, one tree under WorldStereoError, old names deprecated."""

from __future__ import annotations

import ast
import inspect
import pathlib
import warnings

import pytest

from worldstereo_core import errors
from worldstereo_core.errors import (
    CheckpointMismatchError,
    CorruptFileError,
    InvalidFileError,
    InvalidInputError,
    ModelOutOfMemoryError,
    ShapeMismatchError,
    WorldStereoError,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _classes() -> list[type]:
    return [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]


def test_every_error_is_a_worldstereo_error_and_bad_input_stays_a_value_error():
    classes = _classes()
    assert len(classes) >= 15
    for c in classes:
        assert issubclass(c, WorldStereoError), c
        if c is not ModelOutOfMemoryError and c is not WorldStereoError:
            # callers that catch bad-argument errors keep working
            assert issubclass(c, ValueError), c
    assert issubclass(ModelOutOfMemoryError, MemoryError) and not issubclass(ModelOutOfMemoryError, ValueError)
    assert not issubclass(WorldStereoError, ValueError)
    assert issubclass(ShapeMismatchError, InvalidInputError)
    assert issubclass(CorruptFileError, InvalidFileError) and issubclass(CheckpointMismatchError, InvalidFileError)


@pytest.mark.parametrize("old", sorted(errors._DEPRECATED))
def test_old_module_named_errors_still_import_with_a_deprecation_warning(old):
    with pytest.warns(DeprecationWarning, match=old):
        cls = getattr(errors, old)
    assert issubclass(cls, WorldStereoError)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError):
            errors.NoSuchError  # noqa: B018


def test_old_alias_catches_what_its_name_was_raised_for():
    """Code written against an old name keeps working: e.g. ``except CheckpointError`` still
    catches a corrupt file, ``except ModelInputError`` a shape mismatch."""
    with pytest.warns(DeprecationWarning):
        from worldstereo_core.errors import CheckpointError, ModelInputError
    with pytest.raises(CheckpointError):
        raise CorruptFileError("x")
    with pytest.raises(ModelInputError):
        raise ShapeMismatchError("x")


def test_no_shipped_code_raises_or_imports_a_deprecated_name():
    """The deprecated names are for other people's code; ours names the problem."""
    offenders = []
    for folder in ("worldstereo_core", "nodes"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == "errors.py" and path.parent.name == "worldstereo_core":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Name):
                    names = [node.id]
                elif isinstance(node, ast.ImportFrom):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.Attribute):
                    names = [node.attr]
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n in errors._DEPRECATED]
    assert offenders == []
