"""Shared pytest fixtures: the path to the vendored test data (tests/fixtures)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from testsupport import FIXTURES


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The vendored fixtures (``tests/fixtures``: release schemas and upstream example files)."""
    return FIXTURES
