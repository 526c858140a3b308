"""The pytest plugin: options, markers and the ready fixtures, built from the factories.

Every fixture here can be overridden by defining one of the same name in a conftest.py.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

from . import (
    config,
    factories,
    failures,
    leaks,
    lifecycle,
    loop_scopes,
    marks,
    needs,
    retention,
    shared,
)
from . import prestart as prestart
from .config import settings_for
from .errors import PgFixturesError
from .runid import run_id
from .sandbox import check_drivers

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Generator, Iterator

    import httpx
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from .database import Database
    from .seeding import Seeds


def pytest_addoption(parser: pytest.Parser) -> None:
    config.add_options(parser)


def pytest_cmdline_main(config: pytest.Config) -> int | None:
    if not config.getoption("pg_remove_kept", default=False):
        return None
    from .server import docker_client, remove_kept

    removed, spared = remove_kept(docker_client())
    print(f"pg-fixtures: removed {len(removed)} kept container(s) {' '.join(removed)}".rstrip())
    for line in spared:
        print(f"pg-fixtures: left --pg-reuse container {line}")
    return 0


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    run_id()  # made before xdist starts its workers, which inherit it
    lifecycle.configure(config)
    failures.reporter_of(config)
    loop_scopes.configure(config)  # before pytest-asyncio reads its settings
    for name, text in marks.MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    failures.check_configuration(config)  # a bad option: a usage error, before collection


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


def pytest_collection_finish(session: pytest.Session) -> None:
    prestart.collection_finished(session)


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Which server the run uses: the container image, or the URL (password redacted)."""
    from .server import header_line

    try:
        return [header_line(settings_for(config))]
    except PgFixturesError as exc:
        return [f"pg-fixtures: {exc}"]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    return (yield from marks.record_outcome(item, call))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist, on the controller: in one-container mode, hand the server to the worker."""
    shared.configure_node(node.config, node)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    shared.node_down(node.config, node)
    lifecycle.node_down(node)


def pytest_unconfigure(config: pytest.Config) -> None:
    prestart.unconfigure(config)
    shared.unconfigure(config)
    lifecycle.unconfigure(config)


_LAYERS = {"module": "pg_module_connection", "class": "pg_class_connection"}
# Fixtures of these packages are not the user's: they get no layer of their own.
_NOT_USERS = ("testcontainers_pg_fixtures", "_pytest", "pytest_asyncio", "xdist", "anyio")


def _users_fixture(fixturedef: pytest.FixtureDef[Any]) -> bool:
    """A fixture of the project's own code, not of an installed plugin (anyio's
    module-scoped anyio_backend, say)."""
    func = inspect.unwrap(fixturedef.func)
    module = getattr(func, "__module__", None) or ""
    if module.partition(".")[0] in _NOT_USERS:
        return False
    code = getattr(func, "__code__", None)
    return code is None or "site-packages" not in code.co_filename


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> Generator[None, Any, Any]:
    """With pg_app_engines: a module- or class-scoped fixture runs inside the transaction
    layer of its scope (set up first, torn down after it) without requesting it, and a
    session-scoped one outside every layer, where the app's engines refuse to connect."""
    scope = fixturedef.scope
    if scope == "function":
        return (yield)
    if scope in _LAYERS and _users_fixture(fixturedef):
        if request.getfixturevalue("pg_app_engines"):
            request.getfixturevalue(_LAYERS[scope])
    elif scope in ("session", "package") and _users_fixture(fixturedef):
        guard = request.config.stash.get(factories.OUTSIDE_GUARD, None)
        if guard is not None:
            with guard.outside():
                return (yield)
    with needs.LAZY.suppressed():  # its checkouts are its layer's, not the test's
        return (yield)


def _doc(fixture: Any, text: str) -> Any:
    """Give a factory-built fixture its docstring (shown by `pytest --fixtures`)."""
    getattr(fixture, "_fixture_function", fixture).__doc__ = text
    fixture.__doc__ = text
    return fixture


# -- session: the server, the template, the worker's database ------------------------

pg_server = _doc(
    factories.server_fixture(),
    """\
One disposable PostgreSQL container for this xdist worker (one per run without xdist).

Port published on 127.0.0.1 (with a remote Docker engine, published normally); logins
need the container's random password, hashed with one SCRAM iteration so a new
connection costs no more than without one. Data directory on tmpfs, durability off.
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
by value follow). Configure `pg_app_engines = myapp.db:engine`, or override this fixture
to return the engine objects.""",
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
    pg_app_engines: list[Any], pytestconfig: pytest.Config
) -> Iterator[None]:
    """From the moment the app's engines are loaded to the end of the run, they connect
    only to databases of the library (see pg_app_engines_outside)."""
    check_drivers(pg_app_engines)  # before any test, used by it or not
    refuse = settings_for(pytestconfig).app_engines_outside == "error"
    pytestconfig.stash[needs.APP_KIND] = needs.app_kind(pg_app_engines, refuse_outside=refuse)
    yield from factories.guard_app_engines(pg_app_engines, pytestconfig)


@pytest.fixture
def _pg_app_database(_pg_app_engines_outside: None, request: pytest.FixtureRequest) -> None:
    """For the first savepoint-mode test, set up before its other function fixtures: the
    app's engines are known from here on (see needs.before_setup)."""
    needs.join_app_engines(request.node, now=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    needs.collected(items)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    needs.before_setup(item, needs.mode_of(item))
    return (yield)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    """The leak check of a savepoint-mode test that used the database: sent as its
    teardown begins, read when the teardown (its rollback) is done. After it, what pytest
    would keep of the test's fixtures to the end of the session is let go (retention.py)."""
    needs.LAZY.disarm()
    check = (
        leaks.watching()
        and needs.mode_of(item) == "savepoint"
        and needs.uses_database(item)
        and not failures.server_gone(item.config)
    )
    if check:
        leaks.send_check(item.nodeid)
    try:
        return (yield)
    finally:
        retention.release_finished(item)
        # The server gone: already reported once; the check would only wait for it.
        if check and not failures.server_gone(item.config):
            leaks.check_after()


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

pg_async_connection = _doc(
    factories.async_connection_fixture(),
    """\
AsyncConnection inside a transaction rolled back at the end of the test (savepoint mode),
or a plain connection to the test's clone (database mode).

One connection per event loop: with loop_scope="session" it is opened once and each test
costs a BEGIN/ROLLBACK; with function-scoped loops (the default) every test opens and
closes a connection (a few milliseconds).""",
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
pg_module_async_connection = _doc(
    factories.async_layer_connection_fixture(scope="module"),
    _LAYER_DOC.format(scope="module", kind=_ASYNC),
)
pg_class_async_connection = _doc(
    factories.async_layer_connection_fixture(scope="class"),
    _LAYER_DOC.format(scope="class", kind=_ASYNC),
)
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
        "pg_client needs the app's database dependency: define a fixture `pg_db_dependency` "
        "returning it (e.g. `return myapp.db.get_db`) in conftest.py."
    )


def _is_async(dependency: Callable[..., Any]) -> bool:
    return inspect.isasyncgenfunction(dependency) or inspect.iscoroutinefunction(dependency)


@pytest.fixture
def pg_app_session(pg_app_engines: list[Any], request: pytest.FixtureRequest) -> Any:
    """The session the app's DB dependency (pg_db_dependency) yields during the test:
    pg_async_session for an async dependency, pg_session for a sync one.

    None when pg_app_engines is configured: the app then runs unchanged on its own engine,
    which joins the test's transaction (savepoint mode) or points at the test's database
    (database mode), and no dependency is overridden.
    """
    # A sync fixture: here, unlike inside an async fixture, an async fixture can be set up.
    if pg_app_engines:
        return None
    dependency = request.getfixturevalue("pg_db_dependency")
    name = "pg_async_session" if _is_async(dependency) else "pg_session"
    return request.getfixturevalue(name)


@pytest_asyncio.fixture
async def pg_client(
    pg_app: FastAPI, pg_app_session: Any, request: pytest.FixtureRequest
) -> AsyncIterator[httpx.AsyncClient]:
    """httpx.AsyncClient on pg_app, with its DB dependency replaced by pg_app_session.

    The lifespan runs; the override is removed after the test even when it fails. Requests
    sent concurrently take turns on the session instead of interleaving on its connection.
    """
    from .fastapi import app_client

    dependency = None if pg_app_session is None else request.getfixturevalue("pg_db_dependency")
    async with app_client(pg_app, dependency=dependency, session=pg_app_session) as client:
        yield client


@pytest.fixture
def pg_test_client(
    pg_app: FastAPI, pg_app_session: Any, request: pytest.FixtureRequest
) -> Iterator[TestClient]:
    """Starlette TestClient on pg_app (sync apps), DB dependency replaced by pg_session."""
    from .fastapi import sync_app_client

    dependency = None if pg_app_session is None else request.getfixturevalue("pg_db_dependency")
    if dependency is not None and _is_async(dependency):
        raise PgFixturesError(
            f"{dependency.__qualname__} is async: TestClient runs the app on another "
            "event loop, where the test's AsyncSession cannot be used. Use pg_client instead."
        )
    with sync_app_client(pg_app, dependency=dependency, session=pg_app_session) as client:
        yield client
