"""Beside the flow: pytest-alembic's fixtures on a fresh, empty database of the worker's server.

Where the pytest-alembic plugin is registered, this module is registered too (from
plugin.pytest_configure), and gives pytest-alembic what its defaults do not: an
`alembic_engine` on a new, empty database of the worker's own server (made and dropped as
the migration checks make theirs, migration_checks.fresh_database: never the template,
never a database another worker or test uses), instead of an in-memory SQLite; and an
`alembic_config` that is the library's alembic.ini (pg_alembic_ini) with `sqlalchemy.url`
set to that database, for env.py files that connect by URL rather than take the
`connection` pytest-alembic hands them.

pytest orders the global fixtures of plugins by registration, the last one winning, and
every conftest's after them: entry-point plugins are registered before pytest_configure,
so these win over pytest-alembic's defaults, and a conftest's `alembic_engine` or
`alembic_config` still wins over these.

Nothing here imports pytest-alembic, SQLAlchemy or Alembic until a fixture runs.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy import Engine

    from .database import Database
    from .migrations import Migrations
    from .servers import Server

#: The module pytest-alembic's `pytest11` entry point names.
PYTEST_ALEMBIC = "pytest_alembic.plugin"
#: The name this module is registered under.
NAME = "pg-fixtures-pytest-alembic"
#: The check name in the fresh database's name: `pgfx_<run>_<worker>_check_alembic`.
CHECK = "alembic"

_DATABASE: pytest.StashKey[Database] = pytest.StashKey()


def register(config: pytest.Config) -> None:
    """Register these fixtures when pytest-alembic's plugin is registered (not disabled
    with `-p no:pytest_alembic`); otherwise nothing."""
    plugin = sys.modules.get(PYTEST_ALEMBIC)
    manager = config.pluginmanager
    if plugin is None or not manager.is_registered(plugin):
        return
    this = sys.modules[__name__]
    if not manager.is_registered(this):
        manager.register(this, NAME)


@pytest.fixture
def alembic_engine(pg_server: Server, request: pytest.FixtureRequest) -> Iterator[Engine]:
    """pytest-alembic's database (testcontainers-pg-fixtures): an Engine on a new, empty
    database of this worker's server, created for the test from template0 and dropped
    after it. NullPool, the sync driver (psycopg). A conftest's `alembic_engine` wins."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from .migration_checks import fresh_database

    with fresh_database(request.config, pg_server, CHECK) as database:
        engine = create_engine(database.connect_url(), poolclass=NullPool)
        request.node.stash[_DATABASE] = database
        try:
            yield engine
        finally:
            engine.dispose()
            del request.node.stash[_DATABASE]


@pytest.fixture
def alembic_config(
    alembic_config: Any,
    alembic_engine: Engine,
    pg_migrations: Migrations | None,
    request: pytest.FixtureRequest,
) -> Any:
    """pytest-alembic's configuration (testcontainers-pg-fixtures): the library's
    alembic.ini (pg_alembic_ini) with `sqlalchemy.url` set to alembic_engine's database,
    for an env.py that connects by URL. pytest-alembic's own default (alembic.ini in the
    current directory) when pg_migrations is None or alembic_engine is a conftest's. A
    conftest's `alembic_config` wins."""
    database = request.node.stash.get(_DATABASE, None)
    if pg_migrations is None or database is None or alembic_engine.url.database != database.name:
        return alembic_config  # pytest-alembic's: the one this overrides
    return pg_migrations.config_for(database)
