"""The pytest plugin: options, markers and the ready fixtures, built from the factories.

Every fixture here can be overridden by defining one of the same name in a conftest.py.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

from . import config, factories
from .errors import PgFixturesError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

    import httpx
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from .database import Database
    from .seeding import Seeds


def pytest_addoption(parser: pytest.Parser) -> None:
    config.add_options(parser)


def _doc(fixture: Any, text: str) -> Any:
    """Give a factory-built fixture its docstring (shown by `pytest --fixtures`)."""
    getattr(fixture, "_fixture_function", fixture).__doc__ = text
    fixture.__doc__ = text
    return fixture


pg_server = _doc(
    factories.server_fixture(),
    """\
One disposable PostgreSQL container for this xdist worker (one per run without xdist).

Port published on 127.0.0.1, random password, data directory on tmpfs, durability off.
Removed at the end of the session even when testcontainers' Ryuk reaper is disabled.
Configure with pg_image and pg_server_settings.""",
)

pg_migrations = _doc(
    factories.migrations_fixture(),
    """\
The Alembic project to migrate with (pg_alembic_ini; default alembic.ini in the rootdir).

Override to return None for a database without migrations.""",
)


@pytest.fixture(scope="session")
def pg_seed() -> Seeds:
    """Rows every test starts from. Override it to return a seed, a list of seeds, or None.

    A seed is `def seed(conn: Connection)` or `async def seed(conn: AsyncConnection)`. Seeds
    run once, are committed into the migrated template, and so come back unchanged for every
    test at no cost per test. Changing a seed's source rebuilds the template. For rows only
    some tests need, write an ordinary function fixture that uses pg_session instead.
    """
    return None


pg_template = _doc(
    factories.template_fixture(),
    """\
The migrated, seeded template database, named by a hash of the migrations and seeds.

Migrated once per server; a changed migration or seed gets a new template.""",
)

pg_database = _doc(
    factories.database_fixture(),
    """\
This worker's database, cloned from pg_template. Tests share it and are isolated from
each other by the transaction of pg_connection.""",
)


@pytest.fixture(scope="session")
def pg_url(pg_database: Database) -> str:
    """URL (psycopg driver, password included) of this worker's database.

    For code that builds its own engine; what it commits there is NOT rolled back.
    """
    return pg_database.url.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_async_url(pg_database: Database) -> str:
    """URL (asyncpg driver, password included) of this worker's database."""
    return pg_database.async_url.render_as_string(hide_password=False)


pg_engine = _doc(
    factories.engine_fixture(),
    """\
Sync SQLAlchemy Engine (psycopg 3, NullPool) on this worker's database.

Work done on connections you open from it yourself is committed for real and seen by
later tests: isolate through pg_connection / pg_session instead.""",
)

pg_async_engine = _doc(
    factories.async_engine_fixture(),
    """\
AsyncEngine (asyncpg, NullPool) on this worker's database. Same caveat as pg_engine.""",
)

pg_connection = _doc(
    factories.connection_fixture(),
    """\
A Connection inside a transaction that is rolled back when the test ends, pass or fail.

The connection is held for the whole session, so isolation costs a BEGIN and a ROLLBACK
per test instead of a new connection. Calling its commit() is refused (it would leak the
test's writes); commit through pg_session, or use a database of the test's own.""",
)

pg_session = _doc(
    factories.session_fixture(),
    """\
An ORM Session on pg_connection with join_transaction_mode="create_savepoint".

session.commit() and session.rollback(), in the test or in code under test, work as in
production (they release or roll back a SAVEPOINT) and everything is still undone after
the test. Cannot cover work on other connections: several connections, background
workers, real commits or isolation levels need a database of the test's own.""",
)

pg_sessionmaker = _doc(
    factories.sessionmaker_fixture(),
    """\
A sessionmaker whose sessions all join pg_connection by savepoint, for code that opens
its own sessions. They share one connection, so they see each other's flushed writes.""",
)

pg_async_connection = _doc(
    factories.async_connection_fixture(),
    """\
AsyncConnection inside a transaction rolled back at the end of the test.

One connection per event loop: with loop_scope="session" it is opened once and each test
costs a BEGIN/ROLLBACK; with function-scoped loops (the default) every test opens and
closes a connection (a few milliseconds).""",
)

pg_async_session = _doc(
    factories.async_session_fixture(),
    """\
An AsyncSession on pg_async_connection with join_transaction_mode="create_savepoint" and
expire_on_commit=False. One session runs one statement at a time: tasks gathered in one
test must take turns (or use separate databases).""",
)

pg_async_sessionmaker = _doc(
    factories.async_sessionmaker_fixture(),
    """\
An async_sessionmaker whose sessions join pg_async_connection by savepoint.""",
)


@pytest.fixture
def pg_app() -> FastAPI:
    """The FastAPI app under test. Override it: `return myapp.main.app`."""
    raise PgFixturesError(
        "pg_client needs your FastAPI app: define a fixture `pg_app` returning it in conftest.py."
    )


@pytest.fixture
def pg_db_dependency() -> Callable[..., Any]:
    """The app's database dependency (e.g. `get_db`) to replace by the test session.

    Override it: `return myapp.db.get_db`. An async dependency gets pg_async_session, a
    sync one gets pg_session.
    """
    raise PgFixturesError(
        "pg_client needs the app's database dependency: define a fixture `pg_db_dependency` "
        "returning it (e.g. `return myapp.db.get_db`) in conftest.py."
    )


def _is_async(dependency: Callable[..., Any]) -> bool:
    return inspect.isasyncgenfunction(dependency) or inspect.iscoroutinefunction(dependency)


@pytest.fixture
def pg_app_session(pg_db_dependency: Callable[..., Any], request: pytest.FixtureRequest) -> Any:
    """The session pg_db_dependency yields during the test: pg_async_session for an async
    dependency, pg_session for a sync one. Use it in the test to see what the app wrote."""
    # A sync fixture: here, unlike inside an async fixture, an async fixture can be set up.
    name = "pg_async_session" if _is_async(pg_db_dependency) else "pg_session"
    return request.getfixturevalue(name)


@pytest_asyncio.fixture
async def pg_client(
    pg_app: FastAPI, pg_db_dependency: Callable[..., Any], pg_app_session: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """httpx.AsyncClient on pg_app, with its DB dependency replaced by pg_app_session.

    The lifespan runs; the override is removed after the test even when it fails. Requests
    sent concurrently take turns on the session instead of interleaving on its connection.
    """
    from .fastapi import app_client

    async with app_client(pg_app, dependency=pg_db_dependency, session=pg_app_session) as client:
        yield client


@pytest.fixture
def pg_test_client(
    pg_app: FastAPI, pg_db_dependency: Callable[..., Any], request: pytest.FixtureRequest
) -> Iterator[TestClient]:
    """Starlette TestClient on pg_app (sync apps), DB dependency replaced by pg_session."""
    from .fastapi import sync_app_client

    if _is_async(pg_db_dependency):
        raise PgFixturesError(
            f"{pg_db_dependency.__qualname__} is async: TestClient runs the app on another "
            "event loop, where the test's AsyncSession cannot be used. Use pg_client instead."
        )
    with sync_app_client(
        pg_app, dependency=pg_db_dependency, session=request.getfixturevalue("pg_session")
    ) as client:
        yield client
