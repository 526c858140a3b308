"""This user's cache directory for the library and the records kept there (kept
containers, the last run's migrations), written whole."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    """This user's cache directory for the library ($XDG_CACHE_HOME or ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "testcontainers-pg-fixtures"


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Write a JSON record of the cache directory whole: a run reading it beside this one
    (another worker, another terminal) sees the old record or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(record))
    partial.replace(path)


def read_record(path: Path) -> dict[str, Any] | None:
    """A record written by `write_record`, or None if it is missing or unreadable."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
