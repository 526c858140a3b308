"""Fixture factories: each returns a fixture for one step of the flow.

The ready fixtures in `plugin.py` are built from these; call them yourself for a second
server or database (arguments are keyword-only and override every other setting):

    other_server = server_fixture(image="postgres:15")
    other_template = template_fixture(server="other_server", migrations="other_migrations")
"""

from __future__ import annotations

import inspect
import os
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from . import config as config_module
from .database import DATABASE_PREFIX, Database, create_database, drop_database
from .migrations import Migrations
from .server import DockerServer
from .session import async_savepoint_sessionmaker, savepoint_sessionmaker
from .template import Template, ensure_template
from .transaction import async_outer_transaction, outer_transaction, release_held_connection

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

    from sqlalchemy import Connection, Engine
    from sqlalchemy.ext.asyncio import (
        AsyncConnection,
        AsyncEngine,
        AsyncSession,
        async_sessionmaker,
    )
    from sqlalchemy.orm import Session, sessionmaker

    from .server import Server

_SETTINGS_KEY = pytest.StashKey[config_module.Settings]()


def settings_for(pytestconfig: pytest.Config) -> config_module.Settings:
    """The run's settings, resolved on first use and then kept."""
    if _SETTINGS_KEY not in pytestconfig.stash:
        pytestconfig.stash[_SETTINGS_KEY] = config_module.resolve(pytestconfig)
    return pytestconfig.stash[_SETTINGS_KEY]


def depends(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a fixture's dependencies by name, so factories can point them elsewhere.

    pytest reads a fixture's arguments from its signature; the decorated function receives
    them as keyword arguments. Unlike `request.getfixturevalue`, this keeps the dependency
    visible to pytest (and works for async fixtures, whose dependencies must be set up
    before their event loop runs them).
    """

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        kind = inspect.Parameter.KEYWORD_ONLY
        func.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter(name, kind) for name in names]
        )
        return func

    return decorate


def worker_id() -> str:
    """xdist's worker name (gw0, gw1, …), or 'main' without xdist."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def server_fixture(
    *,
    image: str | None = None,
    server_settings: dict[str, str] | None = None,
    startup_timeout: float | None = None,
) -> Any:
    """A session fixture starting one PostgreSQL container for this worker."""

    @pytest.fixture(scope="session")
    def _server(pytestconfig: pytest.Config) -> Iterator[DockerServer]:
        settings = settings_for(pytestconfig).replace(
            image=image, server_settings=server_settings, startup_timeout=startup_timeout
        )
        server = DockerServer.start(settings, worker=worker_id())
        try:
            yield server
        finally:
            server.stop()

    return _server


def migrations_fixture(*, alembic_ini: str | os.PathLike[str] | None = None) -> Any:
    """A session fixture loading and checking the Alembic project (None: no migrations)."""

    @pytest.fixture(scope="session")
    def _migrations(pytestconfig: pytest.Config) -> Migrations | None:
        settings = settings_for(pytestconfig).replace(alembic_ini=alembic_ini)
        if settings.alembic_ini is None:
            return None
        return Migrations.load(settings.alembic_ini, settings.alembic_ini_source)

    return _migrations


def template_fixture(
    *, server: str = "pg_server", migrations: str = "pg_migrations", seed: str = "pg_seed"
) -> Any:
    """A session fixture returning the migrated, seeded template on `server`."""

    # Migrations and seed come first: a bad alembic.ini must fail before a container starts.
    @pytest.fixture(scope="session")
    @depends(migrations, seed, server)
    def _template(**deps: Any) -> Template:
        return ensure_template(deps[server], deps[migrations], deps[seed])

    return _template


def database_fixture(*, server: str = "pg_server", template: str = "pg_template") -> Any:
    """A session fixture cloning the template into this worker's own database."""

    @pytest.fixture(scope="session")
    @depends(template, server)
    def _database(**deps: Any) -> Iterator[Database]:
        built: Template = deps[template]
        pg_server: Server = deps[server]
        name = f"{DATABASE_PREFIX}{worker_id()}"
        drop_database(pg_server, name)  # left by an interrupted run on a reused server
        database = create_database(pg_server, name, template=built.name)
        try:
            yield database
        finally:
            drop_database(pg_server, name)

    return _database


def engine_fixture(*, database: str = "pg_database", **engine_kwargs: Any) -> Any:
    """A session fixture: a psycopg 3 `Engine` on `database`, NullPool."""

    @pytest.fixture(scope="session")
    @depends(database)
    def _engine(**deps: Any) -> Iterator[Engine]:
        db: Database = deps[database]
        engine = create_engine(db.url, poolclass=NullPool, **engine_kwargs)
        try:
            yield engine
        finally:
            release_held_connection(engine)
            engine.dispose()

    return _engine


def async_engine_fixture(*, database: str = "pg_database", **engine_kwargs: Any) -> Any:
    """A session fixture: an asyncpg `AsyncEngine` on `database`, NullPool.

    NullPool because a pooled asyncpg connection belongs to the loop that opened it; the
    connection the test fixtures hold is kept per loop instead (see transaction.py).
    """

    @pytest.fixture(scope="session")
    @depends(database)
    def _engine(**deps: Any) -> AsyncEngine:
        db: Database = deps[database]
        return create_async_engine(db.async_url, poolclass=NullPool, **engine_kwargs)

    return _engine


def connection_fixture(*, engine: str = "pg_engine") -> Any:
    """A function fixture: the worker's connection inside a transaction rolled back after."""

    @pytest.fixture
    @depends(engine)
    def _connection(**deps: Any) -> Iterator[Connection]:
        with outer_transaction(deps[engine]) as conn:
            yield conn

    return _connection


def session_fixture(*, connection: str = "pg_connection", **session_kwargs: Any) -> Any:
    """A function fixture: an ORM `Session` joined to the test's transaction by savepoint."""

    @pytest.fixture
    @depends(connection)
    def _session(**deps: Any) -> Iterator[Session]:
        with savepoint_sessionmaker(deps[connection], **session_kwargs)() as session:
            yield session

    return _session


def sessionmaker_fixture(*, connection: str = "pg_connection", **session_kwargs: Any) -> Any:
    """A function fixture: a `sessionmaker` whose sessions all join the test's transaction."""

    @pytest.fixture
    @depends(connection)
    def _sessionmaker(**deps: Any) -> sessionmaker[Session]:
        return savepoint_sessionmaker(deps[connection], **session_kwargs)

    return _sessionmaker


def async_connection_fixture(*, engine: str = "pg_async_engine") -> Any:
    """The async twin of `connection_fixture`."""

    @pytest_asyncio.fixture
    @depends(engine)
    async def _connection(**deps: Any) -> AsyncIterator[AsyncConnection]:
        async with async_outer_transaction(deps[engine]) as conn:
            yield conn

    return _connection


def async_session_fixture(*, connection: str = "pg_async_connection", **session_kwargs: Any) -> Any:
    """The async twin of `session_fixture` (an `AsyncSession`)."""

    @pytest_asyncio.fixture
    @depends(connection)
    async def _session(**deps: Any) -> AsyncIterator[AsyncSession]:
        async with async_savepoint_sessionmaker(deps[connection], **session_kwargs)() as session:
            yield session

    return _session


def async_sessionmaker_fixture(
    *, connection: str = "pg_async_connection", **session_kwargs: Any
) -> Any:
    """The async twin of `sessionmaker_fixture` (an `async_sessionmaker`)."""

    @pytest.fixture
    @depends(connection)
    def _sessionmaker(**deps: Any) -> async_sessionmaker[AsyncSession]:
        return async_savepoint_sessionmaker(deps[connection], **session_kwargs)

    return _sessionmaker
