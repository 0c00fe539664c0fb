"""Fixtures of the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_prepared import standard_cases, write_prepared


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory) -> Path:
    return write_prepared(tmp_path_factory.mktemp("prepared"), standard_cases())
