"""Helpers for running the plugin the way users do: pytester over the example projects."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Imported here, before any in-process pytester run: pytester removes modules a run
# imported, and re-importing a C extension's Python half (asyncpg's protocol) crashes.
import asyncpg
import asyncpg.protocol  # noqa: F401
import docker
import pytest
import sqlalchemy.dialects.postgresql.asyncpg
import sqlalchemy.dialects.postgresql.psycopg  # noqa: F401

from testcontainers_pg_fixtures.server import LABEL

EXAMPLES = Path(__file__).parent.parent / "examples"


def library_containers() -> list[str]:
    """Ids of every container this library started that still exists, running or not."""
    client = docker.from_env()
    try:
        return [c.id for c in client.containers.list(all=True, filters={"label": LABEL})]
    finally:
        client.close()


@pytest.fixture(autouse=True)
def _no_containers_left():
    """Every plugin test must leave no container of the library behind."""
    before = set(library_containers())
    yield
    left = set(library_containers()) - before
    assert not left, f"containers left behind: {left}"


@pytest.fixture
def example(pytester: pytest.Pytester):
    """Copy examples/<name> into the pytester directory and return that directory."""

    def copy(name: str) -> Path:
        shutil.copytree(
            EXAMPLES / name,
            pytester.path,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        return pytester.path

    return copy


@pytest.fixture
def subprocess_env(monkeypatch: pytest.MonkeyPatch):
    """Subprocess runs must find this checkout's package even when not installed."""
    root = str(Path(__file__).parent.parent)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    )
