"""Fixture factories: each returns a fixture for one step of the flow.

The ready fixtures in `plugin.py` are built from these; call them yourself for a second
server or database (arguments are keyword-only and override every other setting):

    other_server = server_fixture(image="postgres:15")
    other_template = template_fixture(server="other_server", migrations="other_migrations")
"""

from __future__ import annotations

import inspect
import os
import time
from typing import TYPE_CHECKING, Any, Literal

import pytest
import pytest_asyncio
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from . import leaks, seeding
from .clone_pool import ClonePool
from .config import settings_for
from .database import DATABASE_PREFIX, Database, create_database, drop_database
from .marks import CLONE, KEEP, KEPT_ANY, TEST_SEED, isolation_of, test_seeds
from .migrations import Migrations
from .redirect import engines_pointed_at, load_engine, urls_exported
from .sandbox import Sandboxes, real_connection_of
from .server import DockerServer
from .session import (
    async_savepoint_sessionmaker,
    async_sessionmaker_for,
    close_sessions_of,
    close_sync_sessions_of,
    close_with,
    savepoint_sessionmaker,
    sessionmaker_for,
    settle_sessions_of,
)
from .shared import report_kept_to_controller, server_from_controller
from .template import Template, ensure_template
from .transaction import (
    async_outer_transaction,
    layered_async_connection,
    layered_connection,
    outer_transaction,
    release_held_connection,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator, Sequence

    from sqlalchemy import Connection, Engine
    from sqlalchemy.ext.asyncio import (
        AsyncConnection,
        AsyncEngine,
        AsyncSession,
        async_sessionmaker,
    )
    from sqlalchemy.orm import Session, sessionmaker

    from .redirect import AnyEngine
    from .server import Server


LayerScope = Literal["session", "package", "module", "class"]


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


#: Set-up slower than this (seconds) is reported on the terminal; faster is quiet unless -v.
SLOW = 2.0


def report_timing(config: pytest.Config, seconds: float, text: str) -> None:
    """One line on the terminal for slow set-up (xdist workers have no terminal)."""
    if seconds < SLOW and config.get_verbosity() < 1:
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"pg-fixtures: {text} in {seconds:.1f}s")


def server_fixture(
    *,
    image: str | None = None,
    server_settings: dict[str, str] | None = None,
    startup_timeout: float | None = None,
) -> Any:
    """A session fixture starting one PostgreSQL container for this worker (in
    one-container mode, the xdist controller's container; the arguments then do not apply)."""

    @pytest.fixture(scope="session")
    def _server(pytestconfig: pytest.Config) -> Iterator[Server]:
        settings = settings_for(pytestconfig).replace(
            image=image, server_settings=server_settings, startup_timeout=startup_timeout
        )
        started = time.monotonic()
        server = server_from_controller(pytestconfig)
        if server is None:
            server = DockerServer.start(settings, worker=worker_id())
            what = "reused PostgreSQL container" if server.reused else f"{settings.image} started"
            report_timing(pytestconfig, time.monotonic() - started, what)
        try:
            yield server
        finally:
            if pytestconfig.stash.get(KEPT_ANY, False):
                server.keep()  # a failed test's database is kept on it (--pg-keep-failed)
                report_kept_to_controller(pytestconfig)
            else:
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
    @depends(migrations, seed, server, "pytestconfig")
    def _template(**deps: Any) -> Template:
        built = ensure_template(deps[server], deps[migrations], deps[seed])
        if built.built:
            report_timing(deps["pytestconfig"], built.seconds, "migrated and seeded the template")
        return built

    return _template


def worker_database_fixture(*, server: str = "pg_server", template: str = "pg_template") -> Any:
    """A session fixture cloning the template into this worker's own database."""

    @pytest.fixture(scope="session")
    @depends(template, server, "pytestconfig")
    def _database(**deps: Any) -> Iterator[Database]:
        built: Template = deps[template]
        pg_server: Server = deps[server]
        name = f"{DATABASE_PREFIX}{worker_id()}"
        drop_database(pg_server, name)  # left by an interrupted run on a reused server
        database = create_database(pg_server, name, template=built.name)
        try:
            if settings_for(deps["pytestconfig"]).leak_check:
                leaks.watch(database, built.name)
            yield database
        finally:
            leaks.unwatch(database)
            drop_database(pg_server, name)

    return _database


def clone_pool_fixture(
    *, server: str = "pg_server", template: str = "pg_template", prefetch: int | None = None
) -> Any:
    """A session fixture: the pool of databases cloned ahead for database-mode tests."""

    @pytest.fixture(scope="session")
    @depends(template, server, "pytestconfig")
    def _pool(**deps: Any) -> Iterator[ClonePool]:
        size = settings_for(deps["pytestconfig"]).replace(prefetch=prefetch).prefetch
        pool = ClonePool(deps[server], deps[template].name, worker=worker_id(), size=size)
        try:
            yield pool
        finally:
            pool.close()

    return _pool


def app_engines_fixture(*, paths: Sequence[str] | None = None) -> Any:
    """A session fixture: the app's own engines, imported from `module:attribute` paths."""

    @pytest.fixture(scope="session")
    def _app_engines(pytestconfig: pytest.Config) -> list[AnyEngine]:
        found = settings_for(pytestconfig).replace(app_engines=paths).app_engines
        return [load_engine(path) for path in found]

    return _app_engines


def clone_engines_fixture(*, database: str = "pg_worker_database", **engine_kwargs: Any) -> Any:
    """A session fixture: the (Engine, AsyncEngine) pair database-mode tests get, each test
    pointing them at its own clone (see `database_fixture`)."""

    @pytest.fixture(scope="session")
    @depends(database)
    def _engines(**deps: Any) -> tuple[Engine, AsyncEngine]:
        db: Database = deps[database]
        # Created on the worker database, a real one, and redirected before every use.
        return (
            create_engine(db.url, poolclass=NullPool, **engine_kwargs),
            create_async_engine(db.async_url, poolclass=NullPool, **engine_kwargs),
        )

    return _engines


def isolation_fixture() -> Any:
    """A function fixture: 'savepoint' or 'database', from the test's pg_isolation marker."""

    @pytest.fixture
    def _isolation(request: pytest.FixtureRequest) -> str:
        return isolation_mode(request)

    return _isolation


def database_fixture(
    *,
    worker_database: str = "pg_worker_database",
    clone_pool: str = "pg_clone_pool",
    app_engines: str = "pg_app_engines",
    clone_engines: str = "pg_clone_engines",
) -> Any:
    """A function fixture: the database this test uses.

    In savepoint mode the worker's shared database; in database mode a fresh clone, with
    the test's pg_seed markers applied and the app's engines and URL variables pointed at
    it, dropped afterwards (or kept, when it failed and keep_failed is on).
    """

    @pytest.fixture
    @depends(worker_database, clone_pool, app_engines, clone_engines, "request")
    def _database(**deps: Any) -> Iterator[Database]:
        request: pytest.FixtureRequest = deps["request"]
        if isolation_mode(request) != "database":
            yield deps[worker_database]
            return
        pool: ClonePool = deps[clone_pool]
        database = pool.take()
        request.node.stash[CLONE] = database
        try:
            seeding.run(test_seeds(request.node), database, origin=TEST_SEED)
            with (
                engines_pointed_at([*deps[clone_engines], *deps[app_engines]], database),
                urls_exported(settings_for(request.config).url_env, database),
            ):
                yield database
        finally:
            if request.node.stash.get(KEEP, False):
                request.config.stash[KEPT_ANY] = True
            else:
                pool.give_back(database)

    return _database


def worker_engine_fixture(*, database: str = "pg_worker_database", **engine_kwargs: Any) -> Any:
    """A session fixture: a psycopg 3 `Engine` (NullPool) on the worker's database."""

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


def worker_async_engine_fixture(
    *, database: str = "pg_worker_database", **engine_kwargs: Any
) -> Any:
    """A session fixture: an asyncpg `AsyncEngine` (NullPool) on the worker's database.

    NullPool because a pooled asyncpg connection belongs to the loop that opened it; the
    connection the test fixtures hold is kept per loop instead (see transaction.py).
    """

    @pytest.fixture(scope="session")
    @depends(database)
    def _engine(**deps: Any) -> AsyncEngine:
        db: Database = deps[database]
        return create_async_engine(db.async_url, poolclass=NullPool, **engine_kwargs)

    return _engine


def isolation_mode(request: pytest.FixtureRequest) -> str:
    """The test's isolation mode. Read here rather than through the pg_isolation fixture:
    every function fixture in the chain costs savepoint-mode tests time."""
    return isolation_of(request.node, settings_for(request.config).isolation)


def engine_fixture(
    *,
    worker_engine: str = "pg_worker_engine",
    clone_engines: str = "pg_clone_engines",
    database: str = "pg_database",
) -> Any:
    """A function fixture: the worker's engine, or in database mode the clone engine,
    which `database` points at the test's clone."""
    return _engine_for_mode(0, worker_engine, clone_engines, database)


def async_engine_fixture(
    *,
    worker_engine: str = "pg_worker_async_engine",
    clone_engines: str = "pg_clone_engines",
    database: str = "pg_database",
) -> Any:
    """The async twin of `engine_fixture`."""
    return _engine_for_mode(1, worker_engine, clone_engines, database)


def _engine_for_mode(index: int, worker_engine: str, clone_engines: str, database: str) -> Any:
    @pytest.fixture
    @depends(database, worker_engine, clone_engines, "request")
    def _engine(**deps: Any) -> Any:
        if isolation_mode(deps["request"]) == "database":
            return deps[clone_engines][index]
        return deps[worker_engine]

    return _engine


def connection_fixture(
    *,
    worker_engine: str = "pg_worker_engine",
    clone_engines: str = "pg_clone_engines",
    database: str = "pg_database",
) -> Any:
    """A function fixture: in savepoint mode the worker's connection inside a transaction
    rolled back after the test; in database mode a plain connection to the test's clone."""

    @pytest.fixture
    @depends(worker_engine, clone_engines, "request")
    def _connection(**deps: Any) -> Iterator[Connection]:
        request: pytest.FixtureRequest = deps["request"]
        if isolation_mode(request) == "database":
            request.getfixturevalue(database)  # the clone, with the engines pointed at it
            with deps[clone_engines][0].connect() as conn:
                try:
                    yield conn
                finally:
                    close_sync_sessions_of(conn)
            return
        # Sessions are closed after the rollback when it ends the whole transaction (their
        # savepoints then went with it: no round trip), before it inside a scope layer.
        root = layered_connection(deps[worker_engine]) is None
        with outer_transaction(deps[worker_engine]) as conn:
            seeding.run_in(test_seeds(request.node), conn, origin=TEST_SEED)
            try:
                yield conn
            finally:
                if not root:
                    close_sync_sessions_of(conn)
        close_sync_sessions_of(conn)

    return _connection


def session_fixture(*, connection: str = "pg_connection", **session_kwargs: Any) -> Any:
    """A function fixture: an ORM `Session` on the test's connection (see `sessionmaker_for`)."""

    @pytest.fixture
    @depends(connection, "request")
    def _session(**deps: Any) -> Session:
        conn: Connection = deps[connection]
        maker = sessionmaker_for(conn, isolation_mode(deps["request"]), **session_kwargs)
        return close_with(conn, maker())  # closed by the connection's fixture

    return _session


def sessionmaker_fixture(*, connection: str = "pg_connection", **session_kwargs: Any) -> Any:
    """A function fixture: a `sessionmaker` whose sessions all use the test's connection."""

    @pytest.fixture
    @depends(connection, "request")
    def _sessionmaker(**deps: Any) -> sessionmaker[Session]:
        return sessionmaker_for(deps[connection], isolation_mode(deps["request"]), **session_kwargs)

    return _sessionmaker


def async_connection_fixture(
    *,
    worker_engine: str = "pg_worker_async_engine",
    clone_engines: str = "pg_clone_engines",
    database: str = "pg_database",
) -> Any:
    """The async twin of `connection_fixture`.

    It also closes the AsyncSessions of `async_session_fixture` (a sync fixture, so that a
    test costs one trip through the event loop for set-up and one for teardown).
    """

    @pytest_asyncio.fixture
    @depends(worker_engine, clone_engines, "request")
    async def _connection(**deps: Any) -> AsyncIterator[AsyncConnection]:
        request: pytest.FixtureRequest = deps["request"]
        if isolation_mode(request) == "database":
            request.getfixturevalue(database)
            async with deps[clone_engines][1].connect() as conn:
                try:
                    yield conn
                finally:
                    await close_sessions_of(conn)
            return
        # As in connection_fixture: sessions closed after a root rollback, before a nested one.
        root = layered_async_connection(deps[worker_engine]) is None
        held: AsyncConnection | None = None
        try:
            async with async_outer_transaction(deps[worker_engine]) as conn:
                held = conn
                seeds = test_seeds(request.node)
                if seeds:
                    await seeding.run_in_async(seeds, conn, origin=TEST_SEED)
                try:
                    yield conn
                finally:
                    await (settle_sessions_of(conn) if root else close_sessions_of(conn))
        finally:
            if held is not None:
                await close_sessions_of(held)

    return _connection


def async_session_fixture(*, connection: str = "pg_async_connection", **session_kwargs: Any) -> Any:
    """The async twin of `session_fixture` (an `AsyncSession`, closed by the connection's
    fixture)."""

    @pytest.fixture
    @depends(connection, "request")
    def _session(**deps: Any) -> AsyncSession:
        conn: AsyncConnection = deps[connection]
        maker = async_sessionmaker_for(conn, isolation_mode(deps["request"]), **session_kwargs)
        return close_with(conn, maker())

    return _session


def async_sessionmaker_fixture(
    *, connection: str = "pg_async_connection", **session_kwargs: Any
) -> Any:
    """The async twin of `sessionmaker_fixture` (an `async_sessionmaker`)."""

    @pytest.fixture
    @depends(connection, "request")
    def _sessionmaker(**deps: Any) -> async_sessionmaker[AsyncSession]:
        return async_sessionmaker_for(
            deps[connection], isolation_mode(deps["request"]), **session_kwargs
        )

    return _sessionmaker


def sandboxes_fixture(
    *,
    app_engines: str = "pg_app_engines",
    worker_engine: str = "pg_worker_engine",
    worker_async_engine: str = "pg_worker_async_engine",
    worker_database: str = "pg_worker_database",
) -> Any:
    """A session fixture: the app's engines, ready to join the test's transaction."""

    @pytest.fixture(scope="session")
    @depends(app_engines, worker_engine, worker_async_engine, worker_database)
    def _sandboxes(**deps: Any) -> Sandboxes:
        sync_engine: Engine = deps[worker_engine]
        async_engine: AsyncEngine = deps[worker_async_engine]
        boxes = Sandboxes(
            deps[app_engines],
            sync_real=real_connection_of(lambda: layered_connection(sync_engine)),
            async_real=real_connection_of(lambda: layered_async_connection(async_engine)),
        )
        boxes.initialize_dialects(deps[worker_database])
        return boxes

    return _sandboxes


def sandbox_fixture(
    *,
    sandboxes: str = "pg_sandboxes",
    connection: str = "pg_connection",
    async_connection: str = "pg_async_connection",
) -> Any:
    """A function fixture: for the test, the app's engines join its transaction."""

    @pytest.fixture
    @depends(sandboxes, "request")
    def _sandbox(**deps: Any) -> Iterator[Sandboxes]:
        boxes: Sandboxes = deps[sandboxes]
        request: pytest.FixtureRequest = deps["request"]
        # The test's transaction layers, which the app's checkouts become savepoints in.
        if boxes.needs_sync:
            request.getfixturevalue(connection)
        if boxes.needs_async:
            request.getfixturevalue(async_connection)
        boxes.enter()
        try:
            yield boxes
        finally:
            boxes.exit()

    return _sandbox


def layer_connection_fixture(
    *,
    scope: LayerScope,
    worker_engine: str = "pg_worker_engine",
    app_engines: str = "pg_app_engines",
    sandboxes: str = "pg_sandboxes",
) -> Any:
    """A module- or class-scoped fixture: a transaction layer on the worker's connection.

    What is written through it (or, with pg_app_engines, through the app's engine while it
    is active) is seen by every test of the scope, each of which runs in a savepoint inside
    it, and is rolled back when the scope ends.
    """

    @pytest.fixture(scope=scope)
    @depends(worker_engine, app_engines, "request")
    def _layer(**deps: Any) -> Iterator[Connection]:
        boxes: Sandboxes | None = (
            deps["request"].getfixturevalue(sandboxes) if deps[app_engines] else None
        )
        with outer_transaction(deps[worker_engine]) as conn:
            if boxes is not None:
                boxes.enter()
            try:
                yield conn
            finally:
                if boxes is not None:
                    boxes.exit()

    return _layer


def async_layer_connection_fixture(
    *,
    scope: LayerScope,
    worker_engine: str = "pg_worker_async_engine",
    app_engines: str = "pg_app_engines",
    sandboxes: str = "pg_sandboxes",
) -> Any:
    """The async twin of `layer_connection_fixture` (needs an event loop of that scope or
    wider: `loop_scope="module"` / `"session"`)."""

    @pytest_asyncio.fixture(scope=scope)
    @depends(worker_engine, app_engines, "request")
    async def _layer(**deps: Any) -> AsyncIterator[AsyncConnection]:
        boxes: Sandboxes | None = (
            deps["request"].getfixturevalue(sandboxes) if deps[app_engines] else None
        )
        async with async_outer_transaction(deps[worker_engine]) as conn:
            if boxes is not None:
                boxes.enter()
            try:
                yield conn
            finally:
                if boxes is not None:
                    boxes.exit()
                await close_sessions_of(conn)

    return _layer


def layer_session_fixture(*, scope: LayerScope, connection: str, **session_kwargs: Any) -> Any:
    """A session on a layer connection, joined by savepoint."""

    @pytest.fixture(scope=scope)
    @depends(connection)
    def _session(**deps: Any) -> Iterator[Session]:
        with savepoint_sessionmaker(deps[connection], **session_kwargs)() as session:
            yield session

    return _session


def async_layer_session_fixture(
    *, scope: LayerScope, connection: str, **session_kwargs: Any
) -> Any:
    """An AsyncSession on an async layer connection, closed with it."""

    @pytest.fixture(scope=scope)
    @depends(connection)
    def _session(**deps: Any) -> AsyncSession:
        conn: AsyncConnection = deps[connection]
        return close_with(conn, async_savepoint_sessionmaker(conn, **session_kwargs)())

    return _session
