"""Shared pytest fixtures: paths to the repository and to ../shared/fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from testsupport import SHARED_FIXTURES  # noqa: E402


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``../shared/fixtures`` beside the checkout (CI places ``shared/`` there too)."""
    if not SHARED_FIXTURES.is_dir():
        pytest.fail(f"shared fixtures not found at {SHARED_FIXTURES}; clone the project with ../shared beside it")
    return SHARED_FIXTURES
