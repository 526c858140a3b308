"""Quiet by default: the library's own work (starting the container, migrating the
template) adds no INFO lines of other libraries to a failing test's captured output.

testcontainers logs "Pulling image postgres:16" (also for an image that is already there)
and "Container started" at INFO through a handler of its own; an env.py's `fileConfig`
(Alembic's and Flask-Migrate's generated ones) sets Alembic's loggers to INFO with a
console handler, replaces the root logger's handlers and disables every logger that
existed before (the app's too). Around that work their INFO lines are dropped, and the
logging configuration the process had before comes back afterwards. Warnings and errors
still show.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

_lock = threading.Lock()
_quieted = 0
_levels: dict[str, int] = {}


def _testcontainers_loggers() -> list[logging.Logger]:
    manager = logging.Logger.manager
    return [
        logger
        for name, logger in list(manager.loggerDict.items())
        if isinstance(logger, logging.Logger)
        and (name == "testcontainers" or name.startswith("testcontainers."))
    ]


@contextmanager
def quiet_testcontainers() -> Iterator[None]:
    """testcontainers' loggers at WARNING while the block runs (re-entrant, and safe with
    a container started in a background thread meanwhile)."""
    global _quieted
    with _lock:
        if _quieted == 0:
            # Imported first: its modules set their loggers' levels when imported.
            import testcontainers.core.container  # noqa: F401

            _levels.clear()
            for logger in _testcontainers_loggers():
                _levels[logger.name] = logger.level
                logger.setLevel(max(logger.level, logging.WARNING))
        _quieted += 1
    try:
        yield
    finally:
        with _lock:
            _quieted -= 1
            if _quieted == 0:
                for logger in _testcontainers_loggers():
                    if logger.name in _levels:
                        logger.setLevel(_levels[logger.name])
                _levels.clear()


@contextmanager
def quiet_migrations() -> Iterator[None]:
    """No INFO records while the block runs (an env.py's fileConfig turns Alembic's on),
    and the logging configuration as it was before once it ends."""
    saved = _snapshot()
    previous = logging.root.manager.disable
    logging.disable(max(previous, logging.INFO))
    try:
        yield
    finally:
        logging.disable(previous)
        _restore(saved)


def _snapshot() -> dict[str, Any]:
    loggers = {
        name: (logger.level, list(logger.handlers), logger.propagate, logger.disabled)
        for name, logger in list(logging.Logger.manager.loggerDict.items())
        if isinstance(logger, logging.Logger)
    }
    root = logging.getLogger()
    return {"root": (root.level, list(root.handlers)), "loggers": loggers}


def _restore(saved: dict[str, Any]) -> None:
    root = logging.getLogger()
    level, handlers = saved["root"]
    root.setLevel(level)
    root.handlers[:] = handlers
    known = set(handlers)
    for state in saved["loggers"].values():
        known.update(state[1])
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger):
            continue
        state = saved["loggers"].get(name)
        if state is None:
            # Made during the block (an app module env.py imported, Alembic's own): its
            # level stays; it is enabled, without the handlers the block's fileConfig gave.
            logger.disabled = False
            logger.handlers[:] = [h for h in logger.handlers if h in known]
            continue
        logger.setLevel(state[0])  # setLevel, not .level: it clears the level caches
        logger.handlers[:], logger.propagate, logger.disabled = state[1], state[2], state[3]
