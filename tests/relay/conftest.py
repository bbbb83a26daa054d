"""Relay test fixtures; the helpers themselves live in relay/testing.py (importable by any test)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path
