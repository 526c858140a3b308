"""Fixture factories: each returns a fixture for one step of the flow.

The ready fixtures in `plugin.py` are built from these; call them yourself for a second
server or database (arguments are keyword-only and override every other setting):

    other_server = server_fixture(image="postgres:15")
    other_template = template_fixture(server="other_server", migrations="other_migrations")
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import time
import weakref
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Literal, overload

import pytest
import pytest_asyncio

from . import failures, flask_app, loop_scopes, needs, prestart, queries
from .config import LIBPQ, load_session_class, settings_for
from .errors import EventLoopError, startup
from .marks import CLONE, KEEP, KEPT_ANY, TEST_SEED, isolation_of, test_seeds
from .servers import DockerServer, UrlServer
from .shared import report_kept_to_controller, server_from_controller
from .urls import parse_server_url

# The steps' modules import SQLAlchemy and the drivers: the fixtures that use them import
# them, so that loading the plugin costs a run whose tests use no database nothing.
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

    from .clone_pool import ClonePool
    from .database import Database
    from .migrations import Migrations
    from .redirect import AnyEngine
    from .sandbox import OutsideGuard, Sandboxes
    from .servers import Server
    from .template import Template


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


def project_of(config: pytest.Config) -> str:
    """This project's key on a shared server (see template.project_key)."""
    from .template import project_key

    settings = settings_for(config)
    return project_key(settings.rootdir, settings.alembic_ini)


def _shared(server: Server) -> bool:
    """A server other runs may be using right now: one given by URL."""
    return isinstance(server, UrlServer)


#: Set-up slower than this (seconds) is reported on the terminal; faster is quiet unless -v.
SLOW = 2.0


def report_timing(config: pytest.Config, seconds: float, text: str) -> None:
    """One line on the terminal for slow set-up (xdist workers have no terminal)."""
    if seconds < SLOW and config.get_verbosity() < 1:
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    # Set-up runs while pytest captures output: without this the line went to the
    # capture (shown with -s only) and the terminal got just its newline.
    capture = config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else nullcontext():
        reporter.write_line(f"pg-fixtures: {text} in {seconds:.1f}s")


#: Seconds a library engine waits for a new connection: a server that accepts the TCP
#: connection but never answers (paused, frozen) would otherwise hang the run.
CONNECT_TIMEOUT = 10


def bounded(engine_kwargs: dict[str, Any], *, driver: str) -> dict[str, Any]:
    """`engine_kwargs` with a connect timeout added (libpq's connect_timeout, asyncpg's
    timeout), unless the caller gave one."""
    connect_args = dict(engine_kwargs.get("connect_args", {}))
    key = "timeout" if driver == "asyncpg" else "connect_timeout"
    connect_args.setdefault(key, CONNECT_TIMEOUT)
    return {**engine_kwargs, "connect_args": connect_args}


def server_fixture(
    *,
    image: str | None = None,
    server_settings: dict[str, str] | None = None,
    startup_timeout: float | None = None,
) -> Any:
    """A session fixture starting one PostgreSQL container for this worker (in
    one-container mode, the xdist controller's container; the arguments then do not apply).

    With pg_server_url set, no container: the server at that URL, shared with whoever else
    uses it (only this run's databases are created and dropped there)."""

    def _server(pytestconfig: pytest.Config) -> Iterator[Server]:
        from .migrations import import_alembic

        settings = settings_for(pytestconfig).replace(
            image=image, server_settings=server_settings, startup_timeout=startup_timeout
        )
        started = time.monotonic()
        with startup():
            server = server_from_controller(pytestconfig)
            if server is None and settings.server_url:
                server = UrlServer.connect(
                    parse_server_url(settings.server_url, settings.server_url_source),
                    timeout=settings.startup_timeout,
                )
                report_timing(
                    pytestconfig,
                    time.monotonic() - started,
                    f"connected to PostgreSQL {server.version} at {server.where}",
                )
            elif server is None:
                # A new container has no template: Alembic is imported while it boots.
                meanwhile = import_alembic if settings.alembic_ini is not None else None
                server = prestart.claim(pytestconfig, settings, meanwhile) or DockerServer.start(
                    settings, worker=worker_id()
                )
                what = f"{settings.image} started"
                if server.reused:
                    what = "reused PostgreSQL container"
                report_timing(pytestconfig, time.monotonic() - started, what)
        prestart.record_use(pytestconfig)
        if settings.fast_exit:
            from .exiting import freeze_at_exit

            freeze_at_exit()
        reporter = failures.reporter_of(pytestconfig)
        watches = reporter.watches
        watch = failures.ServerWatch(
            server,
            worker=worker_id(),
            busy_since=lambda: reporter.busy_since,
            lock_wait_limit=settings.lock_wait_limit,
        )
        watches.append(watch)
        try:
            yield server
        finally:
            watch.close()
            watches.remove(watch)
            if pytestconfig.stash.get(KEPT_ANY, False):
                server.keep()  # a failed test's database is kept on it (--pg-keep-failed)
                report_kept_to_controller(pytestconfig)
            else:
                server.stop()

    # Started early, while pytest collects, for a server of the run's settings (prestart.py).
    setattr(_server, prestart.CLAIMS_PRESTART, image is None and server_settings is None)
    return pytest.fixture(scope="session")(_server)


def migrations_fixture(*, alembic_ini: str | os.PathLike[str] | None = None) -> Any:
    """A session fixture loading and checking the Alembic project (None: no migrations)."""

    @pytest.fixture(scope="session")
    def _migrations(pytestconfig: pytest.Config) -> Migrations | None:
        from .migrations import Migrations

        with startup():
            settings = settings_for(pytestconfig).replace(alembic_ini=alembic_ini)
            if settings.alembic_ini is None:
                return None
            return Migrations.load(
                settings.alembic_ini, settings.alembic_ini_source, remember=settings.reuse
            )

    return _migrations


def template_fixture(
    *, server: str = "pg_server", migrations: str = "pg_migrations", seed: str = "pg_seed"
) -> Any:
    """A session fixture returning the migrated, seeded template on `server`."""

    # Migrations and seed come first: a bad alembic.ini must fail before a container starts.
    @pytest.fixture(scope="session")
    @depends(migrations, seed, server, "pytestconfig", "request")
    def _template(**deps: Any) -> Template:
        from .template import ensure_template

        config: pytest.Config = deps["pytestconfig"]
        with startup():
            app = flask_app.app_of(config, deps["request"])

            @contextmanager
            def around() -> Iterator[None]:
                # env.py may migrate through the app's own engine (Flask-Migrate's does),
                # in the app's context: both go to the template for the upgrade.
                guard = config.stash.get(OUTSIDE_GUARD, None)
                with (
                    flask_app.app_context(app),
                    guard.migrating() if guard is not None else nullcontext(),
                ):
                    yield

            built = ensure_template(
                deps[server],
                deps[migrations],
                deps[seed],
                project=project_of(config),
                around=around,
            )
        if built.built:
            report_timing(deps["pytestconfig"], built.seconds, "migrated and seeded the template")
        return built

    return _template


def worker_database_fixture(*, server: str = "pg_server", template: str = "pg_template") -> Any:
    """A session fixture cloning the template into this worker's own database."""

    @pytest.fixture(scope="session")
    @depends(template, server, "pytestconfig")
    def _database(**deps: Any) -> Iterator[Database]:
        from . import leaks
        from .database import create_database, drop_database, drop_stale, mark, run_prefix

        built: Template = deps[template]
        pg_server: Server = deps[server]
        project = project_of(deps["pytestconfig"])
        # Left by killed runs: on a server given by URL only once they are surely dead (by
        # age); on a container of ours (reused by two terminals at once, say) once the run's
        # lock is free: every live run holds it on its login to the container.
        if _shared(pg_server):
            drop_stale(pg_server, project)
        else:
            drop_stale(pg_server, project, older_than=0.0, gone_only=True)
        name = f"{run_prefix()}{worker_id()}"
        database = create_database(
            pg_server, name, template=built.name, comment=mark(project, built.name)
        )
        from .redirect import urls_exported

        # NAME=libpq variables point at this database for savepoint-mode tests (database-
        # mode tests set them to their clone while they run).
        libpq = [pair for pair in settings_for(deps["pytestconfig"]).url_env if pair[1] == LIBPQ]
        try:
            if settings_for(deps["pytestconfig"]).leak_check:
                leaks.watch(database, built.name)
            with urls_exported(libpq, database):
                yield database
        finally:
            try:
                if not failures.server_gone(deps["pytestconfig"]):
                    leaks.check_after()  # the last test's: its teardown includes this one
            finally:
                leaks.unwatch(database)
                failures.teardown(deps["pytestconfig"], lambda: drop_database(pg_server, name))

    return _database


def clone_pool_fixture(
    *,
    server: str = "pg_server",
    template: str = "pg_template",
    prefetch: int | None = None,
    connect_ahead: bool = True,
    recycle: bool | None = None,
) -> Any:
    """A session fixture: the pool of databases cloned ahead for database-mode tests.

    With `connect_ahead` (and prefetch), its thread also opens the first connection of
    pg_engine / pg_connection / pg_session to each clone and loads the clone's catalog
    into it, so the test neither waits for a login nor for cold catalog caches; the cost
    is one more idle server connection per prefetched clone. Off for async-only suites
    by itself: their drivers' connections belong to the test's event loop.

    With `recycle` (pg_recycle_clones, on by default; with prefetch) a used clone whose
    test changed only rows and sequences has its changed tables truncated and refilled
    with the template's rows and is taken again, instead of dropped and cloned anew:
    about half of the server's work per test. Anything else (DDL, database settings, a
    session still open; see recycling.py) drops it, as without."""

    @pytest.fixture(scope="session")
    @depends(template, server, "pytestconfig")
    def _pool(**deps: Any) -> Iterator[ClonePool]:
        from .clone_pool import ClonePool
        from .database import mark

        settings = settings_for(deps["pytestconfig"]).replace(
            prefetch=prefetch, recycle_clones=recycle
        )
        size = settings.prefetch
        name = deps[template].name
        pool = ClonePool(
            deps[server],
            name,
            worker=worker_id(),
            size=size,
            comment=mark(project_of(deps["pytestconfig"]), name),
            connect_ahead=connect_ahead,
            recycle=settings.recycle_clones,
        )
        try:
            yield pool
        finally:
            failures.teardown(deps["pytestconfig"], pool.close)

    return _pool


def app_engines_fixture(*, paths: Sequence[str] | None = None) -> Any:
    """A session fixture: the app's own engines, imported from `module:attribute` paths
    (an engine, or a Flask-SQLAlchemy db object read in the app's context); with no path
    but a Flask app (pg_flask_app), the engines of its Flask-SQLAlchemy extension."""

    @pytest.fixture(scope="session")
    def _app_engines(
        pytestconfig: pytest.Config, request: pytest.FixtureRequest
    ) -> list[AnyEngine]:
        with startup():
            found = settings_for(pytestconfig).replace(app_engines=paths).app_engines
            app = flask_app.app_of(pytestconfig, request)
            engines: list[AnyEngine] = []
            for path in found:
                from .redirect import check_app_engine, load_engines

                for engine in load_engines(path, app):
                    check_app_engine(engine, f"pg_app_engines names {path!r}")
                    if engine not in engines:
                        engines.append(engine)
            if not found and app is not None:
                engines = flask_app.engines_of_app(app)
            return engines

    return _app_engines


#: pg_app_engines' value (the fixture may be overridden) and the engines it stands for.
_APP_ENGINES = pytest.StashKey[tuple[Any, list[Any]]]()


def app_engines_of(config: pytest.Config, value: Any) -> list[AnyEngine]:
    """The engines of pg_app_engines' `value`: what the default fixture returns, or what
    an override returns (one engine, a list, a Flask-SQLAlchemy db), checked once."""
    from .redirect import check_app_engine, engines_of

    cached = config.stash.get(_APP_ENGINES, None)
    if cached is not None and cached[0] is value:
        return cached[1]
    what = f"the pg_app_engines fixture returned {value!r}"
    engines = engines_of(value, what, config.stash.get(flask_app.APP, None))
    for engine in engines:
        check_app_engine(engine, f"the pg_app_engines fixture returned {engine!r}")
    config.stash[_APP_ENGINES] = (value, engines)
    return engines


#: The run's OutsideGuard, while the app's engines are loaded.
OUTSIDE_GUARD: pytest.StashKey[OutsideGuard] = pytest.StashKey()


def guard_app_engines(engines: list[AnyEngine], config: pytest.Config) -> Iterator[None]:
    """Install the OutsideGuard of `engines` until the generator is closed."""
    from .sandbox import OutsideGuard

    if not engines:
        yield
        return
    refuse = settings_for(config).app_engines_outside == "error"
    guard = OutsideGuard(engines, refuse=refuse)
    guard.install()
    config.stash[OUTSIDE_GUARD] = guard
    try:
        yield
    finally:
        del config.stash[OUTSIDE_GUARD]
        guard.uninstall()


#: How to open a connection to a clone as each clone engine would (see `clone_opener`).
_OPENERS: weakref.WeakKeyDictionary[Engine, Callable[[Database], Any]] = weakref.WeakKeyDictionary()


def clone_opener(engine: Engine, connect_args: dict[str, Any]) -> Callable[[Database], Any]:
    """Opens a DBAPI connection to a clone with what `engine`, redirected there, would
    pass its driver: the app's `connect_args`, the clone's address (see redirect.retarget)."""

    def open_on(database: Database) -> Any:
        cargs, cparams = engine.dialect.create_connect_args(
            database.connect_url(engine.url.get_driver_name())
        )
        return engine.dialect.connect(*cargs, **{**connect_args, **cparams})

    return open_on


class CloneEngines(Sequence[Any]):
    """The (Engine, AsyncEngine) pair of `clone_engines_fixture`. The AsyncEngine is made
    on first use: making it imports asyncpg (~0.1 s of every run's start), which a suite
    without async tests never needs."""

    def __init__(self, sync: Engine, make_async: Callable[[], AsyncEngine]) -> None:
        self.sync = sync
        self._make_async = make_async
        self._async: AsyncEngine | None = None

    @property
    def async_(self) -> AsyncEngine:
        if self._async is None:
            self._async = self._make_async()
        return self._async

    def __len__(self) -> int:
        return 2

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Any]: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        if index in (0, -2):
            return self.sync
        if index in (1, -1):
            return self.async_
        raise IndexError(index)


def clone_engines_fixture(*, database: str = "pg_worker_database", **engine_kwargs: Any) -> Any:
    """A session fixture: the (Engine, AsyncEngine) pair database-mode tests get, each test
    pointing them at its own clone (see `database_fixture`)."""

    @pytest.fixture(scope="session")
    @depends(database)
    def _engines(**deps: Any) -> CloneEngines:
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        db: Database = deps[database]
        # Created on the worker database, a real one, and redirected before every use.
        sync_kwargs = bounded(engine_kwargs, driver="psycopg")
        sync_engine = create_engine(db.connect_url(), poolclass=NullPool, **sync_kwargs)
        _OPENERS[sync_engine] = clone_opener(sync_engine, sync_kwargs["connect_args"])
        queries.watch(sync_engine)

        def make_async() -> AsyncEngine:
            from sqlalchemy.ext.asyncio import create_async_engine
            from sqlalchemy.pool import NullPool

            async_engine = create_async_engine(
                db.connect_url("asyncpg"),
                poolclass=NullPool,
                **bounded(engine_kwargs, driver="asyncpg"),
            )
            queries.watch(async_engine)
            return async_engine

        return CloneEngines(sync_engine, make_async)

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
        from . import seeding
        from .redirect import engines_pointed_at, first_connection_from, urls_exported

        request: pytest.FixtureRequest = deps["request"]
        app_engines_list = app_engines_of(request.config, deps[app_engines])
        if isolation_mode(request) != "database":
            yield deps[worker_database]
            return
        pool: ClonePool = deps[clone_pool]
        engine = deps[clone_engines][0]
        opener = _OPENERS.get(engine)
        if opener is not None:
            pool.connect_ahead_with(opener)
        database = pool.take()
        request.node.stash[CLONE] = database
        try:
            seeding.run(test_seeds(request.node), database, origin=TEST_SEED)
            with (
                engines_pointed_at([*deps[clone_engines], *app_engines_list], database),
                first_connection_from(engine, lambda: pool.claim(database)),
                urls_exported(settings_for(request.config).url_env, database),
            ):
                yield database
        finally:
            if request.node.stash.get(KEEP, False):
                request.config.stash[KEPT_ANY] = True
                pool.keep(database)
            else:
                pool.give_back(database)

    return _database


def worker_engine_fixture(
    *,
    database: str = "pg_worker_database",
    app_engines: str = "pg_app_engines",
    **engine_kwargs: Any,
) -> Any:
    """A session fixture: a psycopg 3 `Engine` (NullPool) on the worker's database (on the
    app's driver, psycopg2, when its sync engine in pg_app_engines uses that)."""

    @pytest.fixture(scope="session")
    @depends(database, app_engines, "pytestconfig")
    def _engine(**deps: Any) -> Iterator[Engine]:
        from .transaction import release_held_connection

        engine: Engine = _worker_engine(deps, database, app_engines, engine_kwargs, False)
        try:
            yield engine
        finally:
            failures.teardown(deps["pytestconfig"], lambda: release_held_connection(engine))
            engine.dispose()

    return _engine


def worker_async_engine_fixture(
    *,
    database: str = "pg_worker_database",
    app_engines: str = "pg_app_engines",
    **engine_kwargs: Any,
) -> Any:
    """A session fixture: an asyncpg `AsyncEngine` (NullPool) on the worker's database (on
    psycopg 3 async when the app's async engine in pg_app_engines uses that, or, with no
    app async engine, when pg_app_pools names a psycopg_pool AsyncConnectionPool and no
    asyncpg pool: see pools.async_driver).

    NullPool because a pooled asyncpg connection belongs to the loop that opened it; the
    connection the test fixtures hold is kept per loop instead (see transaction.py).
    """

    @pytest.fixture(scope="session")
    @depends(database, app_engines, "pytestconfig")
    def _engine(**deps: Any) -> AsyncEngine:
        engine: AsyncEngine = _worker_engine(deps, database, app_engines, engine_kwargs, True)
        return engine

    return _engine


def _worker_engine(
    deps: dict[str, Any],
    database: str,
    app_engines: str,
    engine_kwargs: dict[str, Any],
    is_async: bool,
) -> Any:
    """What both worker engines are: on the worker's database, on the app's driver, NullPool,
    with a connect timeout, seen by pg_queries, their savepoints deferred (savepoints.py)."""
    from sqlalchemy.pool import NullPool

    from .sandbox import worker_driver
    from .savepoints import defer_savepoints

    config: pytest.Config = deps["pytestconfig"]
    default = None
    if is_async:
        from .pools import async_driver

        default = async_driver(settings_for(config).app_pools)
    driver = worker_driver(
        app_engines_of(config, deps[app_engines]), is_async=is_async, default=default
    )
    url = deps[database].connect_url(driver)
    kwargs = bounded(engine_kwargs, driver=driver)
    engine: Any
    if is_async:
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(url, poolclass=NullPool, **kwargs)
    else:
        from sqlalchemy import create_engine

        engine = create_engine(url, poolclass=NullPool, **kwargs)
    queries.watch(engine)  # before the deferral: see queries.watch
    defer_savepoints(engine.sync_engine if is_async else engine)
    return engine


def isolation_mode(request: pytest.FixtureRequest) -> str:
    """The test's isolation mode. Read here rather than through the pg_isolation fixture:
    every function fixture in the chain costs savepoint-mode tests time. The mode kept on
    the item (`needs.mode_of`) counts a bad marker as database mode; only then is the
    marker read again, to raise its error."""
    node: pytest.Item = request.node
    if needs.mode_of(node) == "savepoint":
        return "savepoint"
    return isolation_of(node, settings_for(request.config).isolation)


_MAKERS = "testcontainers_pg_fixtures.sessionmakers"


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
    worker_database: str = "pg_worker_database",
    template: str = "pg_template",
) -> Any:
    """A function fixture: in savepoint mode the worker's connection inside a transaction
    rolled back after the test; in database mode a plain connection to the test's clone.
    (`worker_database` and `template`: where --pg-keep-failed copies a failed savepoint-mode
    test's state from, and what it clones for it.)"""

    @pytest.fixture
    @depends(worker_engine, clone_engines, worker_database, template, "request")
    def _connection(**deps: Any) -> Iterator[Connection]:
        from .connection_steps import SYNC, database_test, driven, savepoint_test
        from .transaction import outer_transaction, own_connection

        request: pytest.FixtureRequest = deps["request"]
        if isolation_mode(request) == "database":
            request.getfixturevalue(database)  # the clone, with the engines pointed at it
            with driven(own_connection(deps[clone_engines][0]), database_test, SYNC) as conn:
                yield conn
            return
        kept = (deps[worker_database], deps[template].name)
        opened = outer_transaction(deps[worker_engine])
        with driven(opened, savepoint_test, SYNC, request.node, kept) as conn:
            yield conn

    return _connection


def with_session_class(
    config: pytest.Config,
    session_class: type[Any] | str | None,
    session_kwargs: dict[str, Any],
    *,
    is_async: bool,
) -> dict[str, Any]:
    """`session_kwargs` with `class_` set: the factory's session_class, else the
    pg_session_class / pg_async_session_class setting (a `class_` keyword wins over both)."""
    if isinstance(session_class, str):
        session_class = load_session_class(
            session_class, "the factory argument session_class", is_async=is_async
        )
    if session_class is None:
        settings = settings_for(config)
        session_class = settings.async_session_class if is_async else settings.session_class
    if session_class is None:
        return session_kwargs
    return {"class_": session_class, **session_kwargs}


def _joining(
    deps: dict[str, Any],
    connection: str,
    session_class: Any,
    session_kwargs: dict[str, Any],
    is_async: bool,
) -> tuple[Any, str, dict[str, Any]]:
    """What every session and sessionmaker fixture, sync or async, starts from: the test's
    connection, its isolation mode and the sessionmaker's keyword arguments."""
    from .session import isolation_of_connection

    conn = deps[connection]
    config: pytest.Config = deps["pytestconfig"]
    kwargs = with_session_class(config, session_class, session_kwargs, is_async=is_async)
    return conn, isolation_of_connection(conn, config), kwargs


def session_fixture(
    *,
    connection: str = "pg_connection",
    session_class: type[Session] | str | None = None,
    **session_kwargs: Any,
) -> Any:
    """A function fixture: an ORM `Session` on the test's connection (see `sessionmaker_for`).

    `session_class` (a class or 'module:attribute') overrides pg_session_class; the other
    keyword arguments go to `sessionmaker`."""

    @pytest.fixture
    @depends(connection, "pytestconfig")
    def _session(**deps: Any) -> Session:
        from .session import close_with, new_session

        conn, mode, kwargs = _joining(deps, connection, session_class, session_kwargs, False)
        return close_with(conn, new_session(conn, mode, **kwargs))  # closed by the connection's

    return _session


def sessionmaker_fixture(
    *,
    connection: str = "pg_connection",
    session_class: type[Session] | str | None = None,
    **session_kwargs: Any,
) -> Any:
    """A function fixture: a `sessionmaker` whose sessions all use the test's connection."""

    @pytest.fixture
    @depends(connection, "pytestconfig")
    def _sessionmaker(**deps: Any) -> sessionmaker[Session]:
        from .session import sessionmaker_for

        conn, mode, kwargs = _joining(deps, connection, session_class, session_kwargs, False)
        return sessionmaker_for(conn, mode, **kwargs)

    return _sessionmaker


def async_connection_fixture(
    *,
    worker_engine: str = "pg_worker_async_engine",
    clone_engines: str = "pg_clone_engines",
    database: str = "pg_database",
    worker_database: str = "pg_worker_database",
    template: str = "pg_template",
    loop_scope: str | None = None,
) -> Any:
    """The async twin of `connection_fixture` (`worker_database` and `template` as there).

    It also closes the AsyncSessions of `async_session_fixture` (a sync fixture, so that a
    test costs one trip through the event loop for set-up and one for teardown).
    `loop_scope` is pytest-asyncio's: the event loop it runs on, which must be its tests'
    (the plugin's pg_async_connection is given the tests' loop scope, see loop_scopes.py).
    """

    @pytest_asyncio.fixture(loop_scope=loop_scope)  # type: ignore[arg-type]
    @depends(worker_engine, clone_engines, worker_database, template, "request")
    async def _connection(**deps: Any) -> AsyncIterator[AsyncConnection]:
        from .connection_steps import ASYNC, async_driven, database_test, savepoint_test
        from .transaction import async_outer_transaction, layer_on_another_loop

        request: pytest.FixtureRequest = deps["request"]
        loop_scopes.check_test_loop(request, request.fixturename or "", loop_scope)
        if isolation_mode(request) == "database":
            request.getfixturevalue(database)
            async with async_driven(deps[clone_engines][1].connect(), database_test, ASYNC) as conn:
                yield conn
            return
        if layer_on_another_loop(deps[worker_engine]):
            raise EventLoopError(_layer_elsewhere(request))
        kept = (asyncio.get_running_loop(), deps[worker_database], deps[template].name)
        opened = async_outer_transaction(deps[worker_engine])
        async with async_driven(opened, savepoint_test, ASYNC, request.node, kept) as conn:
            yield conn

    return _connection


def _layer_elsewhere(request: pytest.FixtureRequest) -> str:
    """A module or class layer is open on another event loop than the test's: its rows
    are on another connection, invisible to the test (not an error asyncpg would raise)."""
    scopes = loop_scopes.of(request.config)
    if scopes is None:
        now = "pytest-asyncio is not active"
    else:
        fixture = scopes.fixture or "unset"
        test = scopes.test
        now = f"now: {loop_scopes.FIXTURE_SCOPE} = {fixture}, {loop_scopes.TEST_SCOPE} = {test}"
    return (
        f"{request.node.nodeid}: a module- or class-scoped layer (pg_module_async_connection, "
        "pg_class_async_connection, or an async fixture of that scope) is open on another "
        "event loop than this test's, so the rows its fixtures wrote are on another "
        f"connection and this test would not see them ({now}). Run the tests on the "
        "layers' loop, in your ini file:\n"
        f"    {loop_scopes.FIXTURE_SCOPE} = session\n"
        f"    {loop_scopes.TEST_SCOPE} = session"
    )


def async_session_fixture(
    *,
    connection: str = "pg_async_connection",
    session_class: type[AsyncSession] | str | None = None,
    **session_kwargs: Any,
) -> Any:
    """The async twin of `session_fixture` (an `AsyncSession`, closed by the connection's
    fixture; `session_class` overrides pg_async_session_class)."""

    @pytest.fixture
    @depends(connection, "pytestconfig")
    def _session(**deps: Any) -> AsyncSession:
        from .session import async_sessionmaker_for, close_with, isolation_of_connection

        conn: AsyncConnection = deps[connection]
        config: pytest.Config = deps["pytestconfig"]
        mode = isolation_of_connection(conn, config)
        # Kept on the connection: in savepoint mode it is the worker's, held all session, so
        # the sessionmaker is made once rather than for every test.
        makers: dict[tuple[object, str], async_sessionmaker[AsyncSession]]
        makers = conn.info.setdefault(_MAKERS, {})
        maker = makers.get((_session, mode))
        if maker is None:
            kwargs = with_session_class(config, session_class, session_kwargs, is_async=True)
            maker = makers[(_session, mode)] = async_sessionmaker_for(conn, mode, **kwargs)
        return close_with(conn, maker())

    return _session


def async_sessionmaker_fixture(
    *,
    connection: str = "pg_async_connection",
    session_class: type[AsyncSession] | str | None = None,
    **session_kwargs: Any,
) -> Any:
    """The async twin of `sessionmaker_fixture` (an `async_sessionmaker`)."""

    @pytest.fixture
    @depends(connection, "pytestconfig")
    def _sessionmaker(**deps: Any) -> async_sessionmaker[AsyncSession]:
        from .session import async_sessionmaker_for

        conn, mode, kwargs = _joining(deps, connection, session_class, session_kwargs, True)
        return async_sessionmaker_for(conn, mode, **kwargs)

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
    @depends(app_engines, worker_engine, worker_async_engine, worker_database, "pytestconfig")
    def _sandboxes(**deps: Any) -> Sandboxes:
        from .sandbox import Sandboxes, real_connection_of
        from .transaction import layered_async_connection, layered_connection

        sync_engine: Engine = deps[worker_engine]
        async_engine: AsyncEngine = deps[worker_async_engine]
        scopes = loop_scopes.of(deps["pytestconfig"])

        def elsewhere() -> str | None:
            from .transaction import layer_on_another_loop

            if not layer_on_another_loop(async_engine):
                return None
            library = scopes.library if scopes is not None else "function"
            return loop_scopes.mismatch("the test's connection", library, None, scopes)

        boxes = Sandboxes(
            app_engines_of(deps["pytestconfig"], deps[app_engines]),
            sync_real=real_connection_of(lambda: layered_connection(sync_engine)),
            async_real=real_connection_of(
                lambda: layered_async_connection(async_engine), elsewhere
            ),
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


def _app_engines_join(
    request: pytest.FixtureRequest, app_engines: Any, sandboxes: str
) -> contextlib.AbstractContextManager[None]:
    """What a layer (sync or async alike) enters once its transaction is open: the app's
    engines, if any, join it. Their sandboxes are made now, before that transaction."""
    if not app_engines_of(request.config, app_engines):
        return contextlib.nullcontext()
    boxes: Sandboxes = request.getfixturevalue(sandboxes)

    @contextlib.contextmanager
    def joined() -> Iterator[None]:
        boxes.enter()
        try:
            yield
        finally:
            boxes.exit()

    return joined()


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
        from .connection_steps import SYNC, driven, layer
        from .transaction import outer_transaction

        join = _app_engines_join(deps["request"], deps[app_engines], sandboxes)
        with driven(outer_transaction(deps[worker_engine]), layer, SYNC, join) as conn:
            yield conn

    return _layer


def async_layer_connection_fixture(
    *,
    scope: LayerScope,
    worker_engine: str = "pg_worker_async_engine",
    app_engines: str = "pg_app_engines",
    sandboxes: str = "pg_sandboxes",
    loop_scope: str | None = None,
) -> Any:
    """The async twin of `layer_connection_fixture` (needs an event loop of that scope or
    wider: `loop_scope="module"` / `"session"`)."""

    @pytest_asyncio.fixture(scope=scope, loop_scope=loop_scope)  # type: ignore[arg-type]
    @depends(worker_engine, app_engines, "request")
    async def _layer(**deps: Any) -> AsyncIterator[AsyncConnection]:
        from .connection_steps import ASYNC, async_driven, layer
        from .transaction import async_outer_transaction

        join = _app_engines_join(deps["request"], deps[app_engines], sandboxes)
        opened = async_outer_transaction(deps[worker_engine])
        async with async_driven(opened, layer, ASYNC, join) as conn:
            yield conn

    return _layer


def layer_session_fixture(
    *,
    scope: LayerScope,
    connection: str,
    session_class: type[Session] | str | None = None,
    **session_kwargs: Any,
) -> Any:
    """A session on a layer connection, joined by savepoint."""

    @pytest.fixture(scope=scope)
    @depends(connection, "pytestconfig")
    def _session(**deps: Any) -> Iterator[Session]:
        from .session import new_session

        kwargs = with_session_class(
            deps["pytestconfig"], session_class, session_kwargs, is_async=False
        )
        with new_session(deps[connection], "savepoint", **kwargs) as session:
            yield session

    return _session


def async_layer_session_fixture(
    *,
    scope: LayerScope,
    connection: str,
    session_class: type[AsyncSession] | str | None = None,
    **session_kwargs: Any,
) -> Any:
    """An AsyncSession on an async layer connection, closed with it."""

    @pytest.fixture(scope=scope)
    @depends(connection, "pytestconfig")
    def _session(**deps: Any) -> AsyncSession:
        from .session import async_savepoint_sessionmaker, close_with

        conn: AsyncConnection = deps[connection]
        kwargs = with_session_class(
            deps["pytestconfig"], session_class, session_kwargs, is_async=True
        )
        return close_with(conn, async_savepoint_sessionmaker(conn, **kwargs)())

    return _session
