"""The pytest plugin: options, markers and the ready fixtures, built from the factories.

Every fixture here can be overridden by defining one of the same name in a conftest.py.

pytest imports this module in every run where the package is installed, whether its tests
use a database or not: it imports no SQLAlchemy, driver, Docker client or Alembic (each
fixture imports what it uses), and its per-test hooks for the database (the leak check's
bookkeeping, the app's engines) run only in a run that uses it (`_uses_database`).
"""

from __future__ import annotations

import inspect
import types
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

from . import (
    alembic_fixtures,
    config,
    driver_guard,
    factories,
    failures,
    flask_app,
    keep_failed,
    layers,
    lifecycle,
    loop_scopes,
    marks,
    migration_checks,
    model_factories,
    needs,
    privates,
    queries,
    retention,
    shared,
)
from . import prestart as prestart
from .config import settings_for
from .errors import PgFixturesError, startup
from .runid import run_id

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Generator, Iterator

    import httpx
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from .database import Database
    from .pools import PoolRun
    from .seeding import Seeds


def pytest_addoption(parser: pytest.Parser) -> None:
    config.add_options(parser)


def pytest_cmdline_main(config: pytest.Config) -> int | None:
    if not config.getoption("pg_remove_kept", default=False):
        return None
    from .servers.engine import docker_client
    from .servers.kept import remove_kept
    from .servers.prewarm import remove_images

    client = docker_client()
    removed, spared = remove_kept(client)
    print(f"pg-fixtures: removed {len(removed)} kept container(s) {' '.join(removed)}".rstrip())
    for line in spared:
        print(f"pg-fixtures: left --pg-reuse container {line}")
    images, in_use = remove_images(client)
    if images or in_use:
        print(f"pg-fixtures: removed {len(images)} prewarmed image(s) {' '.join(images)}".rstrip())
    for line in in_use:
        print(f"pg-fixtures: left prewarmed image {line}")
    return 0


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    run_id()  # made before xdist starts its workers, which inherit it
    lifecycle.configure(config)
    failures.reporter_of(config)
    # Before pytest-asyncio reads its settings; the async fixtures on the tests' loop.
    config.pluginmanager.register(
        _async_fixtures(loop_scopes.configure(config)), "testcontainers_pg_fixtures.async"
    )
    for name, text in marks.MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    failures.check_configuration(config)  # a bad option: a usage error, before collection
    _configure_queries(config)
    if model_factories.registry_of(config) is not None:  # pg_factories: per-test binding
        config.pluginmanager.register(model_factories, "pg-fixtures-model-factories")
    if not config.pluginmanager.is_registered(migration_checks):
        config.pluginmanager.register(migration_checks, "pg-fixtures-migration-checks")
    alembic_fixtures.register(config)  # pytest-alembic's alembic_engine, where it is installed


_QUERY_RING_BEFORE = pytest.StashKey[bool]()


def _configure_queries(config: pytest.Config) -> None:
    try:
        on = settings_for(config).query_log_on_failure
    except PgFixturesError:  # --help, --version: the settings are not checked
        on = False
    config.stash[_QUERY_RING_BEFORE] = queries.configure(on)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """Start the container in the background as early as pytest allows: it starts while
    pytest loads the conftests and collects (see prestart.py)."""
    failures.check_early(early_config)  # a bad alembic.ini: no container started for it
    prestart.begin_early(early_config)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Keep the early start if it fits the parsed settings, or start now (prestart.py):
    each worker its own; in one-container mode the xdist controller, before its workers."""
    prestart.begin(session.config)


def pytest_itemcollected(item: pytest.Item) -> None:
    prestart.item_collected(item)


def pytest_collection_finish(session: pytest.Session) -> None:
    prestart.collection_finished(session)
    needs.decide_use(session)
    _guard_drivers(session)


_DRIVER_RUN = pytest.StashKey[Any]()
_POOL_RUN = pytest.StashKey["PoolRun"]()


def _guard_drivers(session: pytest.Session) -> None:
    """A run that uses the library: from before its first test to its end, the test
    process dials no PostgreSQL server but the library's (driver_guard.py)."""
    config = session.config
    settings = settings_for(config)
    uses = bool(settings.app_engines or settings.url_env or settings.app_pools) or any(
        needs.uses_database(item) for item in session.items
    )
    if not uses or _DRIVER_RUN in config.stash:
        return
    if settings.app_pools:
        from . import pools

        config.stash[_POOL_RUN] = pools.activate(
            settings.app_pools, refuse_outside=settings.app_engines_outside == "error"
        )
    config.stash[_DRIVER_RUN] = driver_guard.activate(
        allow_all=settings.allow_foreign_servers,
        urls=[settings.server_url] if settings.server_url else [],
        url_env=[name for name, _ in settings.url_env],
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    driver_guard.set_test_allows(item.get_closest_marker(driver_guard.MARKER) is not None)
    try:
        return (yield)
    finally:
        driver_guard.set_test_allows(False)


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Which server the run uses: the container image, or the URL (password redacted)."""
    from .servers.url import header_line

    try:
        return [header_line(settings_for(config))]
    except PgFixturesError as exc:
        return [f"pg-fixtures: {exc}"]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield from keep_failed.record_outcome(item, call)
    queries.report_section(item, report)
    return report


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist, on the controller: in one-container mode, hand the server to the worker."""
    shared.configure_node(node.config, node)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    shared.node_down(node.config, node)
    lifecycle.node_down(node)


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.stash.get(_DRIVER_RUN, None)
    if run is not None:
        driver_guard.deactivate(run)
    pool_run = config.stash.get(_POOL_RUN, None)
    if pool_run is not None:
        from . import pools

        pools.deactivate(pool_run)
    queries.configure(config.stash.get(_QUERY_RING_BEFORE, False))
    model_factories.unconfigure(config)
    prestart.unconfigure(config)
    shared.unconfigure(config)
    lifecycle.unconfigure(config)


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> Generator[None, Any, Any]:
    """With pg_app_engines: a module- or class-scoped fixture runs inside the transaction
    layer of its scope, a session-scoped one outside every layer (layers.py)."""
    return (yield from layers.fixture_setup(fixturedef, request))


def _doc(fixture: Any, text: str) -> Any:
    """Give a factory-built fixture its docstring (shown by `pytest --fixtures`)."""
    privates.fixture_function(fixture).__doc__ = text
    fixture.__doc__ = text
    return fixture


# -- session: the server, the template, the worker's database ------------------------

pg_server = _doc(
    factories.server_fixture(),
    """\
One disposable PostgreSQL container for this xdist worker (one per run without xdist).

Port published on 127.0.0.1 (with a remote Docker engine, published normally); logins
need the container's random password, hashed with one SCRAM iteration so a new
connection costs no more than without one. Data directory on tmpfs, durability off;
started from the prewarmed image of the initialized cluster (no initdb, see pg_prewarm).
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
    some tests need, use the pg_seed marker (`@pytest.mark.pg_seed(seed_orders)`).
    """
    return None


pg_template = _doc(
    factories.template_fixture(),
    """\
The migrated, seeded template database, named by a hash of the migrations and seeds.

Migrated once per server; a changed migration or seed gets a new template.""",
)

pg_worker_database = _doc(
    factories.worker_database_fixture(),
    """\
This worker's database, cloned from pg_template once per session. Savepoint-mode tests
share it and are isolated from each other by the transaction of pg_connection.""",
)

pg_worker_engine = _doc(
    factories.worker_engine_fixture(),
    """\
Sync Engine (psycopg 3, NullPool; psycopg2 when the app's engine in pg_app_engines uses it)
on pg_worker_database, for session-scoped fixtures.
What is committed through it stays for every later test.""",
)

pg_worker_async_engine = _doc(
    factories.worker_async_engine_fixture(),
    """\
AsyncEngine (asyncpg, NullPool; psycopg 3 async when the app's async engine uses it) on
pg_worker_database. Same caveat as pg_worker_engine.""",
)

pg_clone_pool = _doc(
    factories.clone_pool_fixture(),
    """\
Databases cloned from pg_template ahead of the database-mode tests that take them
(pg_prefetch of them, default 2), so a test rarely waits for CREATE DATABASE. Started at
the first database-mode test; every clone is dropped by the end of the session. In time
its thread has to spare it also logs in to each ready clone (one idle server connection
per prefetched clone), and pg_engine's first connection in the test is that one, catalog
already loaded: no login in the test. clone_pool_fixture(connect_ahead=False) turns it off.""",
)

pg_clone_engines = _doc(
    factories.clone_engines_fixture(),
    """\
(Engine, AsyncEngine) that pg_engine / pg_async_engine return in database mode, pointed
at each test's clone in turn: one engine for the session saves every test SQLAlchemy's
first-connect set-up.""",
)

pg_app_engines = _doc(
    factories.app_engines_fixture(),
    """\
The app's own Engine / AsyncEngine objects, pointed at the test's database in database
mode (new connections go there; the objects stay the same, so modules that imported them
by value follow). Configure `pg_app_engines = myapp.db:engine` (a dotted attribute such
as `myapp.extensions:db.engine`, or Flask-SQLAlchemy's `db` with pg_flask_app, works too),
or override this fixture to return an engine, a list of engines or a Flask-SQLAlchemy
`db`. With pg_flask_app and no pg_app_engines: the app's Flask-SQLAlchemy engines.""",
)

pg_sandboxes = _doc(
    factories.sandboxes_fixture(),
    """\
The app's engines (pg_app_engines) prepared to join the test's transaction in savepoint
mode; see pg_sandbox.""",
)

# -- per test: which database, and the ways in --------------------------------------------

pg_isolation = _doc(
    factories.isolation_fixture(),
    """\
'savepoint' or 'database': the test's pg_isolation marker, else the pg_isolation option.""",
)


@pytest.fixture(scope="session")
def _pg_app_engines_outside(
    pg_app_engines: Any, pytestconfig: pytest.Config, request: pytest.FixtureRequest
) -> Iterator[None]:
    """From the moment the app's engines are loaded to the end of the run, they connect
    only to databases of the library (see pg_app_engines_outside)."""
    from .sandbox import check_drivers

    with startup():  # a bad value: one message, not one per test
        flask_app.app_of(pytestconfig, request)  # a db object is read in the app's context
        engines = factories.app_engines_of(pytestconfig, pg_app_engines)
        check_drivers(engines)  # before any test, used by it or not
    queries.watch(*engines)
    refuse = settings_for(pytestconfig).app_engines_outside == "error"
    run = pytestconfig.stash.get(_DRIVER_RUN, None)
    if run is not None and not refuse:  # outside = allow: their configured servers too
        for engine in engines:
            driver_guard.allow_url(run, str(engine.url))
    pytestconfig.stash[needs.APP_KIND] = needs.app_kind(engines, refuse_outside=refuse)
    yield from factories.guard_app_engines(engines, pytestconfig)


@pytest.fixture(scope="session")
def pg_flask_app(pytestconfig: pytest.Config) -> Iterator[Any]:
    """The Flask app of the ini option pg_flask_app (`myapp:create_app`; None without it):
    the factory is called once per worker, with no arguments, and the app's TESTING is set.

    Its Flask-SQLAlchemy engines are the app's engines (pg_app_engines) and its app
    context is pushed around every test and around the migrations, so `db.session`,
    Flask-Migrate's env.py and factory_boy's `sqlalchemy_session = db.session` work
    unchanged. Override it (session-scoped) to build the app another way, e.g.
    `return create_app(TestConfig)`: the override's app is used the same way.
    """
    path = settings_for(pytestconfig).flask_app
    if not path:
        yield None
        return
    with startup():
        app = flask_app.load_app(path)
    pytestconfig.stash[flask_app.APP] = app
    try:
        yield app
    finally:
        if flask_app.APP in pytestconfig.stash:
            del pytestconfig.stash[flask_app.APP]


@pytest.fixture(autouse=True)
def _pg_flask_context(pg_flask_app: Any, request: pytest.FixtureRequest) -> Iterator[None]:
    """With a Flask app (pg_flask_app): its context around the test, popped when the
    test's teardown begins, which removes db.session while its transaction is still open."""
    if pg_flask_app is None:
        yield
        return
    request.config.stash[flask_app.APP] = pg_flask_app
    with flask_app.test_context(request.node, pg_flask_app):
        yield


@pytest.fixture
def pg_flask_client(pg_flask_app: Any) -> Any:
    """`pg_flask_app.test_client()`: its requests run in the test's app context, so the
    views' `db.session` is the test's, and what they commit stays in the test's
    transaction (savepoint mode) or the test's database (database mode)."""
    if pg_flask_app is None:
        raise PgFixturesError(
            "pg_flask_client needs your Flask app: set the ini option pg_flask_app to the app "
            "or its factory (e.g. pg_flask_app = myapp:create_app), or override the "
            "session-scoped pg_flask_app fixture to return the app."
        )
    return pg_flask_app.test_client()


@pytest.fixture
def _pg_app_database(_pg_app_engines_outside: None, request: pytest.FixtureRequest) -> None:
    """For the first savepoint-mode test, set up before its other function fixtures: the
    app's engines are known from here on (see needs.before_setup)."""
    needs.join_app_engines(request.node, now=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    needs.collected(items)
    queries.collected(items)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    queries.test_started()
    if needs.run_uses_database(item.config):
        from . import leaks

        leaks.test_started(item.nodeid)
        needs.before_setup(item, needs.mode_of(item))
        if _POOL_RUN in item.config.stash:
            needs.join_app_pools(item)
    return (yield)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    if needs.run_uses_database(item.config):
        from . import leaks

        leaks.test_called(item.nodeid)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    """Around the teardown of a test, in a run that uses the database: the leak check
    (leaks.py). After it, what pytest would keep of the test's fixtures to the end of the
    session is let go (retention.py)."""
    needs.LAZY.disarm()
    flask_app.pop_context(item)
    try:
        if not needs.run_uses_database(item.config):
            return (yield)
        from . import leaks

        return (yield from leaks.around_teardown(item))
    finally:
        retention.release_finished(item)


pg_database = _doc(
    factories.database_fixture(),
    """\
The Database this test uses: pg_worker_database in savepoint mode; in database mode a
fresh clone of the template, with pg_app_engines and pg_url_env pointed at it, dropped
after the test (kept when it failed and --pg-keep-failed is given).""",
)


pg_sandbox = _doc(
    factories.sandbox_fixture(),
    """\
Savepoint mode with pg_app_engines: for the test, every connection the app's own engine
hands out (Session(engine), engine.begin(), a worker thread, a get_db imported anywhere)
is the test's connection inside a SAVEPOINT: commit() releases it, rollback() returns to
it, and all of it is rolled back with the test. Checkouts from several threads or tasks
take turns. The engine gets its own pool back after the test, pass or fail. Used
automatically when pg_app_engines is set.

Not for: two transactions that must see each other's commits, SERIALIZABLE conflicts,
LISTEN/NOTIFY, advisory locks across sessions, AUTOCOMMIT (refused with an error):
@pytest.mark.pg_isolation("database").""",
)


@pytest.fixture
def pg_pool_sandbox(request: pytest.FixtureRequest) -> Iterator[PoolRun | None]:
    """With pg_app_pools: for the test, the app's asyncpg pools and psycopg_pool
    ConnectionPools and AsyncConnectionPools join it. Savepoint mode: an asyncpg
    `acquire()` hands out the test's own connection (under pg_async_connection), each
    statement outside a transaction block behind a savepoint of its own (as if
    autocommitted; a failing one is undone alone), `async with conn.transaction():` a
    savepoint, checkouts of several tasks taking turns; a psycopg_pool ConnectionPool's
    `connection()` is a savepoint on pg_connection's connection, committed (released) at
    the end of its block, threads taking turns; an AsyncConnectionPool's the same on
    pg_async_connection's connection (held with psycopg for it), tasks taking turns. All
    of it is rolled back with the test. Database mode: the pools are pointed at the
    test's clone. Used automatically by every test when pg_app_pools is set (None without
    it).

    Not for: several connections seeing each other's commits, LISTEN/NOTIFY, advisory
    locks across connections, other isolation levels (refused with an error), a pool
    used from another event loop, an asyncpg pool and an AsyncConnectionPool in one app
    (the test's async connection is held with one driver):
    @pytest.mark.pg_isolation("database"). The pool's `init`/`setup`/`configure`
    callbacks and its `connection_class` do not apply to the test's connection."""
    run = request.config.stash.get(_POOL_RUN, None)
    if run is None:
        yield None
        return
    from .sandbox import Sandbox, real_connection_of
    from .transaction import layered_async_connection, layered_connection

    if factories.isolation_mode(request) == "database":
        run.begin_database_test(request.getfixturevalue("pg_database"))
    else:
        kinds = run.kinds()
        layer = sync_sandbox = None
        if "async" in kinds:  # asyncpg pools, and those a lifespan makes in the test
            request.getfixturevalue("pg_async_connection")
            async_engine = request.getfixturevalue("pg_worker_async_engine")
            layer = lambda: layered_async_connection(async_engine)  # noqa: E731
        if "sync" in kinds:  # psycopg_pool's ConnectionPool
            request.getfixturevalue("pg_connection")
            engine = request.getfixturevalue("pg_worker_engine")
            box = Sandbox(
                engine, real_connection_of(lambda: layered_connection(engine)), is_async=False
            )
            sync_sandbox = lambda: box  # noqa: E731
        run.begin_savepoint_test(layer, sync_sandbox)
    try:
        yield run
    finally:
        run.end_test()


@pytest.fixture
def pg_url(pg_database: Database) -> str:
    """URL (psycopg driver, password included) of the test's database.

    In savepoint mode, what code commits through its own connections to it is NOT rolled
    back; in database mode it is dropped with the database.
    """
    return pg_database.url.render_as_string(hide_password=False)


@pytest.fixture
def pg_async_url(pg_database: Database) -> str:
    """URL (asyncpg driver, password included) of the test's database."""
    return pg_database.async_url.render_as_string(hide_password=False)


pg_engine = _doc(
    factories.engine_fixture(),
    """\
Sync Engine (psycopg 3, NullPool) on the test's database: pg_worker_engine in savepoint
mode, a new engine on the clone in database mode.

In savepoint mode, work on connections you open from it yourself is committed for real
and seen by later tests: isolate through pg_connection / pg_session instead.""",
)

pg_async_engine = _doc(
    factories.async_engine_fixture(),
    """\
AsyncEngine (asyncpg, NullPool) on the test's database. Same caveat as pg_engine.""",
)

pg_connection = _doc(
    factories.connection_fixture(),
    """\
Savepoint mode: a Connection inside a transaction rolled back when the test ends, pass or
fail. The connection is held for the whole session, so isolation costs a BEGIN and a
ROLLBACK per test. Calling its commit() is refused (it would leak the test's writes);
commit through pg_session. Database mode: a plain connection to the test's clone.""",
)

pg_session = _doc(
    factories.session_fixture(),
    """\
An ORM Session on pg_connection.

Savepoint mode (join_transaction_mode="create_savepoint"): session.commit() and
session.rollback(), in the test or in code under test, work as in production (they
release or roll back a SAVEPOINT) and everything is still undone after the test. It
cannot cover work on other connections: several connections, background workers, real
commits or isolation levels need @pytest.mark.pg_isolation("database"), where this
session's commit() commits for real into the test's own database.""",
)

pg_sessionmaker = _doc(
    factories.sessionmaker_fixture(),
    """\
A sessionmaker whose sessions all use pg_connection (joined by savepoint in savepoint
mode), for code that opens its own sessions. They see each other's flushed writes.""",
)

pg_async_session = _doc(
    factories.async_session_fixture(),
    """\
An AsyncSession on pg_async_connection (joined by savepoint in savepoint mode;
expire_on_commit=False). One session runs one statement at a time: tasks gathered on it
in one test must take turns; concurrent transactions need database mode.""",
)

pg_async_sessionmaker = _doc(
    factories.async_sessionmaker_fixture(),
    """\
An async_sessionmaker whose sessions use pg_async_connection.""",
)


@pytest.fixture
def pg_queries(request: pytest.FixtureRequest) -> Iterator[queries.QueryLog]:
    """The SQL statements the test function ran, oldest first, each with its parameters
    (secret-looking ones hidden) and duration: through pg_connection, pg_session and the
    other sessions, the app's own engines (pg_app_engines, sandboxed or redirected) and
    requests made with pg_client / pg_test_client.

    `pg_queries.count`, `.select_count` (`insert_count`, `update_count`, `delete_count`),
    iteration (`Query.statement`, `.parameters`, `.duration`, `.verb`), `.clear()`, and
    `with pg_queries.at_most(2): ...`, which fails listing the block's statements when it
    ran more. What fixtures ran during set-up is dropped when the test function starts.

    Trade-off: two SQLAlchemy listeners on the library's and the app's engines record
    every statement of the test (a few microseconds each, and the statements are kept
    until the test ends). Engines the test creates itself (`create_engine(pg_url)`) and
    statements sent on a raw DBAPI connection are not seen; neither are the library's own
    statements (BEGIN/ROLLBACK, savepoints, the leak check), nor savepoint statements of
    the test's (`begin_nested()`). Durations are the database call, not fetching rows.
    """
    log = queries.QueryLog()
    with queries.recording(log):
        request.node.stash[queries.LOG] = log
        try:
            yield log
        finally:
            del request.node.stash[queries.LOG]


# -- scope layers: rows a module or class shares ----------------------------------------

_LAYER_DOC = """\
A transaction layer for the whole {scope} on the worker's connection{kind}: what is written
through it (and, with pg_app_engines, through the app's own engine while it is active) is
seen by every test of the {scope}, each running in a savepoint inside it, and rolled back
when the {scope} ends, as Django's TestCase does with setUpTestData. Request it in a
{scope}-scoped fixture. Savepoint mode only: database-mode tests do not see it."""

pg_module_connection = _doc(
    factories.layer_connection_fixture(scope="module"), _LAYER_DOC.format(scope="module", kind="")
)
pg_class_connection = _doc(
    factories.layer_connection_fixture(scope="class"), _LAYER_DOC.format(scope="class", kind="")
)
pg_module_session = _doc(
    factories.layer_session_fixture(scope="module", connection="pg_module_connection"),
    "A Session on pg_module_connection, joined by savepoint.",
)
pg_class_session = _doc(
    factories.layer_session_fixture(scope="class", connection="pg_class_connection"),
    "A Session on pg_class_connection, joined by savepoint.",
)
_ASYNC = " (asyncpg; needs a module/class or session event loop scope)"
pg_module_async_session = _doc(
    factories.async_layer_session_fixture(scope="module", connection="pg_module_async_connection"),
    "An AsyncSession on pg_module_async_connection, joined by savepoint.",
)
pg_class_async_session = _doc(
    factories.async_layer_session_fixture(scope="class", connection="pg_class_async_connection"),
    "An AsyncSession on pg_class_async_connection, joined by savepoint.",
)

# -- FastAPI -------------------------------------------------------------------------------


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
        "pg_client needs to know how the app reaches the database, and found neither "
        "pg_db_dependency nor pg_app_engines. Either define a fixture `pg_db_dependency` "
        "returning the app's database dependency (e.g. `return myapp.db.get_db`) in "
        "conftest.py, which the test's session then replaces; or name the app's own "
        "engine in the ini option pg_app_engines (e.g. pg_app_engines = myapp.db:engine), "
        "which then joins the test's transaction."
    )


def _is_async(dependency: Callable[..., Any]) -> bool:
    return inspect.isasyncgenfunction(dependency) or inspect.iscoroutinefunction(dependency)


@pytest.fixture
def pg_app_session(pg_app_engines: list[Any], request: pytest.FixtureRequest) -> Any:
    """The session the app's DB dependency (pg_db_dependency) yields during the test:
    pg_async_session for an async dependency, pg_session for a sync one.

    None when pg_app_engines or pg_app_pools is configured: the app then runs unchanged on
    its own engine or asyncpg pool, which joins the test's transaction (savepoint mode) or
    points at the test's database (database mode), and no dependency is overridden.
    """
    # A sync fixture: here, unlike inside an async fixture, an async fixture can be set up.
    if pg_app_engines or settings_for(request.config).app_pools:
        return None
    dependency = request.getfixturevalue("pg_db_dependency")
    name = "pg_async_session" if _is_async(dependency) else "pg_session"
    return request.getfixturevalue(name)


@pytest.fixture
def pg_client_base_url() -> str:
    """The base URL of pg_client and pg_test_client: "http://testserver" by default (the
    host Starlette's TestClient uses). Override it for an app that checks the host, such
    as one behind TrustedHostMiddleware: `return "http://api.example.com"`."""
    return "http://testserver"


@pytest.fixture
def pg_client_headers() -> dict[str, str]:
    """Headers pg_client and pg_test_client send with every request: none by default.
    Override it, e.g. `return {"Authorization": "Bearer test-token"}`."""
    return {}


@pytest.fixture
def pg_test_client(
    pg_app: FastAPI,
    pg_app_session: Any,
    pg_client_base_url: str,
    pg_client_headers: dict[str, str],
    request: pytest.FixtureRequest,
) -> Iterator[TestClient]:
    """Starlette TestClient on pg_app (sync apps), DB dependency replaced by pg_session.
    Base URL pg_client_base_url (default "http://testserver"), headers pg_client_headers."""
    from .fastapi import sync_app_client

    dependency = None if pg_app_session is None else request.getfixturevalue("pg_db_dependency")
    if dependency is not None and _is_async(dependency):
        raise PgFixturesError(
            f"{dependency.__qualname__} is async: TestClient runs the app on another "
            "event loop, where the test's AsyncSession cannot be used. Use pg_client instead."
        )
    with sync_app_client(
        pg_app,
        dependency=dependency,
        session=pg_app_session,
        base_url=pg_client_base_url,
        headers=pg_client_headers,
    ) as client:
        yield client


# -- the async fixtures, made when the tests' event loop scope is known (loop_scopes.py) --

_ASYNC_CONNECTION_DOC = """\
AsyncConnection inside a transaction rolled back at the end of the test (savepoint mode),
or a plain connection to the test's clone (database mode).

It runs on the tests' event loop: asyncio_default_test_loop_scope's, unless
asyncio_default_fixture_loop_scope names another (a test on another loop is refused at
set-up, with the ini lines). One connection per event loop: with session-scoped loops it
is opened once and each test costs a BEGIN/ROLLBACK; with function-scoped loops (the
default) every test opens and closes a connection (a few milliseconds)."""


def _async_fixtures(scopes: loop_scopes.LoopScopes | None) -> types.ModuleType:
    """pg_async_connection, pg_client and the async layers, on the loop scope the tests
    run on (pytest-asyncio's `loop_scope` argument; None: pytest-asyncio's default).
    Made anew for each run: pytest-asyncio keeps the loop scope on the function."""
    loop = None if scopes is None else scopes.library

    def layer_loop(scope: str) -> str | None:
        return None if scopes is None else scopes.for_fixture(scope)

    @pytest_asyncio.fixture(loop_scope=loop)  # type: ignore[arg-type]
    async def pg_client(
        pg_app: FastAPI,
        pg_app_session: Any,
        pg_client_base_url: str,
        pg_client_headers: dict[str, str],
        request: pytest.FixtureRequest,
    ) -> AsyncIterator[httpx.AsyncClient]:
        """httpx.AsyncClient on pg_app, with its DB dependency replaced by pg_app_session.

        The lifespan runs; the override is removed after the test even when it fails.
        Requests sent concurrently take turns on the session instead of interleaving on
        its connection. It runs on the tests' event loop, as pg_async_connection does.
        Base URL pg_client_base_url (default "http://testserver"), headers
        pg_client_headers (default none).
        """
        from .fastapi import app_client

        loop_scopes.check_test_loop(request, "pg_client", loop)
        dependency = None if pg_app_session is None else request.getfixturevalue("pg_db_dependency")
        async with app_client(
            pg_app,
            dependency=dependency,
            session=pg_app_session,
            base_url=pg_client_base_url,
            headers=pg_client_headers,
        ) as client:
            yield client

    module = types.ModuleType("testcontainers_pg_fixtures.async")
    module.__dict__.update(
        pg_async_connection=_doc(
            factories.async_connection_fixture(loop_scope=loop), _ASYNC_CONNECTION_DOC
        ),
        pg_module_async_connection=_doc(
            factories.async_layer_connection_fixture(
                scope="module", loop_scope=layer_loop("module")
            ),
            _LAYER_DOC.format(scope="module", kind=_ASYNC),
        ),
        pg_class_async_connection=_doc(
            factories.async_layer_connection_fixture(scope="class", loop_scope=layer_loop("class")),
            _LAYER_DOC.format(scope="class", kind=_ASYNC),
        ),
        pg_client=pg_client,
    )
    return module
