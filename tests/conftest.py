"""Shared pytest fixtures.

Puts the repository root and ``tests/`` on ``sys.path`` so both ``import datasets`` and
``from tests.fixtures import make_fixture`` / ``from fixtures import make_fixture`` work however pytest is run.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent
for _path in (str(_TESTS.parent), str(_TESTS)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from fixtures import make_fixture  # noqa: E402


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory):
    """``fixture_root(database) -> data root`` holding the tiny fixture of ``database``.

    One data root per session; each database is written on first request and reused. Tests must not modify
    it (use ``make_fixture(database, tmp_path)`` to get a private copy to corrupt).
    """
    root = tmp_path_factory.mktemp("data_root")
    written: set[str] = set()

    def get(database: str) -> Path:
        if database not in written:
            make_fixture(database, root)
            written.add(database)
        return root

    return get
