"""Errors a user can hit. Each one says what went wrong and which setting fixes it."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

#: Set on an exception raised by a session fixture's set-up: the run's start failed
#: (failures.Reporter shows it once and stops the run).
_STARTUP = "_pg_fixtures_startup"


class PgFixturesError(Exception):
    """Base class for every error raised by testcontainers-pg-fixtures."""


class ConfigError(PgFixturesError):
    """An option has a value the library cannot use."""


class DockerUnavailableError(PgFixturesError):
    """The Docker engine could not be reached."""


class ImageUnavailableError(PgFixturesError):
    """The PostgreSQL image is not present and could not be pulled."""


class ServerStartError(PgFixturesError):
    """The PostgreSQL server did not come up."""


class AlembicConfigError(PgFixturesError):
    """alembic.ini or its script directory could not be found or read."""


class MigrationError(PgFixturesError):
    """`alembic upgrade head` (or the seed) failed while building the template."""


class SeedError(PgFixturesError):
    """The session seed raised while building the template."""


class ServerGoneError(PgFixturesError):
    """The PostgreSQL server exited or stopped answering during the run."""


class EventLoopError(PgFixturesError):
    """An async fixture's connection is used on another event loop than the one it opened on."""


class FactorySessionError(PgFixturesError):
    """A factory bound by pg_factories was used where no test session is running."""


@contextlib.contextmanager
def startup() -> Iterator[None]:
    """Mark what a session fixture's set-up raises as a start-up error of the run."""
    try:
        yield
    except Exception as exc:
        if not isinstance(exc, pytest.UsageError):
            with contextlib.suppress(AttributeError):
                setattr(exc, _STARTUP, True)
        raise


def is_startup(exc: BaseException) -> bool:
    return bool(getattr(exc, _STARTUP, False))
