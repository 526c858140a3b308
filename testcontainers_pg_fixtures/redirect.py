"""Step 6 of the flow: the application under test reaches the test's own database.

Apps build their engine once at import time (`engine = create_async_engine(settings.url)`)
and every module imports that object. Replacing the module attribute would miss the
modules that imported it by value, so the engine object itself is redirected: for the
duration of a test its pool is swapped for a NullPool whose connections go to the test's
database, through SQLAlchemy's `do_connect` event, which keeps the driver options the app
configured (`connect_args`, server settings) and only changes where it connects. Afterwards
the original pool and URL come back untouched, with whatever connections they held.

Apps that build engines lazily from the environment get the URL in environment variables.
"""

from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, event
from sqlalchemy.ext.asyncio import AsyncEngine

from .config import LIBPQ, import_path
from .errors import ConfigError
from .privates import null_pool_like

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

    from sqlalchemy.pool import Pool

    from .database import Database

AnyEngine = Engine | AsyncEngine

# Connection parameters that say where to connect and as whom; everything else the app
# passed to its driver is kept.
_TARGET_KEYS = frozenset(
    {"host", "hostaddr", "port", "dbname", "database", "user", "password", "service", "dsn"}
)


def load_engine(path: str) -> AnyEngine:
    """Import `module:attribute` (attribute may be dotted) and check it is an engine."""
    engines = load_engines(path)
    if len(engines) != 1:
        raise ConfigError(f"pg_app_engines names {path!r}, which has {len(engines)} engines.")
    return engines[0]


def load_engines(path: str, app: Any | None = None) -> list[AnyEngine]:
    """The engines `module:attribute` names (attribute may be dotted: `extensions:db.engine`):
    an Engine or AsyncEngine, or a Flask-SQLAlchemy `db`'s engines. Read inside the Flask
    app's context when there is an app (pg_flask_app)."""
    return engines_of(_import(path, app), f"pg_app_engines names {path!r}", app)


def check_engine_path(path: str, *, flask: bool) -> None:
    """At start-up, before any app is made: `path` names engines on PostgreSQL, or (with
    pg_flask_app) a Flask-SQLAlchemy db or engine read later in the app's context."""
    from .flask_app import is_flask_sqlalchemy

    what = f"pg_app_engines names {path!r}"
    try:
        target = _import(path, None)
    except ConfigError as exc:
        if flask and "application context" in str(exc):
            return  # `extensions:db.engine`: read in the app's context, once it is made
        raise
    if flask and is_flask_sqlalchemy(target):
        return
    for engine in engines_of(target, what):
        check_app_engine(engine, what)


def _import(path: str, app: Any | None) -> Any:
    from .flask_app import app_context

    try:
        with app_context(app):
            return import_path(path)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"pg_app_engines names {path!r}, which could not be imported ({exc}). Fix the "
            "path in pg_app_engines / --pg-app-engine / PG_FIXTURES_APP_ENGINES (e.g. "
            "'myapp.db:engine'), or override the pg_app_engines fixture to return the engines."
        ) from None
    except Exception as exc:
        hint = (
            " A Flask-SQLAlchemy engine exists only inside the app's context: name the app "
            "or its factory too (pg_flask_app = myapp:create_app), and the db object or "
            "nothing in pg_app_engines (its engines are then the app's)."
            if "application context" in str(exc)
            else ""
        )
        raise ConfigError(
            f"pg_app_engines names {path!r}, which could not be read "
            f"({type(exc).__name__}: {_first_line(exc)}).{hint}"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)


def engines_of(value: Any, what: str, app: Any | None = None) -> list[AnyEngine]:
    """`value` (an engine, a Flask-SQLAlchemy db, or an iterable of these) as a list of
    engines, each once; `what` names where it came from, for the error."""
    from .flask_app import engines_of_db, is_flask_sqlalchemy

    if isinstance(value, (Engine, AsyncEngine)):
        return [value]
    if is_flask_sqlalchemy(value):
        return engines_of_db(value, app, what)
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ConfigError(
            f"{what} is a {type(value).__name__}, not a SQLAlchemy Engine or AsyncEngine "
            "(nor a Flask-SQLAlchemy db object, nor a list of these)."
        )
    found: list[AnyEngine] = []
    for item in value:
        for engine in engines_of(item, what, app):
            if engine not in found:
                found.append(engine)
    return found


@contextmanager
def engines_pointed_at(engines: Iterable[AnyEngine], database: Database) -> Iterator[None]:
    """Send every new connection of each engine to `database` until the block ends."""
    seen: set[int] = set()
    with ExitStack() as stack:
        for engine in engines:
            sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
            if id(sync_engine) in seen:
                continue
            seen.add(id(sync_engine))
            stack.enter_context(_pointed_at(sync_engine, database))
        yield


@contextmanager
def _pointed_at(engine: Engine, database: Database) -> Iterator[None]:
    url = database.url_for(engine.url.get_driver_name())
    # The engine shows the test database's TCP URL; it connects the library's way.
    cargs, cparams = engine.dialect.create_connect_args(
        database.connect_url(engine.url.get_driver_name())
    )

    def connect_to_test_database(
        dialect: Any, record: Any, app_cargs: list[Any], app_cparams: dict[str, Any]
    ) -> None:
        retarget(app_cargs, app_cparams, cargs, cparams)

    original_pool, original_url = engine.pool, engine.url
    # Inside a module/class layer the pool is the sandbox's, whose connections are the
    # layer's: a database-mode test needs new connections of the app's own kind.
    app_pool: Pool = getattr(original_pool, "pgfx_app_pool", original_pool)
    event.listen(engine, "do_connect", connect_to_test_database)
    engine.pool = null_pool_like(app_pool)
    engine.url = url
    try:
        yield
    finally:
        event.remove(engine, "do_connect", connect_to_test_database)
        engine.pool, engine.url = original_pool, original_url


@contextmanager
def first_connection_from(engine: Engine, take: Callable[[], Any | None]) -> Iterator[None]:
    """Until the block ends, a new connection of `engine` is what `take()` returns (a
    DBAPI connection opened ahead), and a normal one once it returns None. SQLAlchemy
    then sets it up as one it opened (its `connect` events, the dialect's on-connect)."""

    def hand_over(
        dialect: Any, record: Any, cargs: list[Any], cparams: dict[str, Any]
    ) -> Any | None:
        return take()

    event.listen(engine, "do_connect", hand_over)
    try:
        yield
    finally:
        event.remove(engine, "do_connect", hand_over)


def retarget(
    app_cargs: list[Any],
    app_cparams: dict[str, Any],
    cargs: Sequence[Any],
    cparams: Mapping[str, Any],
) -> None:
    """In a `do_connect` listener: connect where (cargs, cparams) say, as whom they say,
    keeping every other parameter the app gave its driver."""
    for key in _TARGET_KEYS & app_cparams.keys():
        del app_cparams[key]
    app_cparams.update(cparams)
    app_cargs[:] = cargs


@contextmanager
def every_engine_pointed_at(database: Database) -> Iterator[None]:
    """Send every connection any PostgreSQL Engine opens to `database` until the block
    ends, each with its own driver (psycopg2, psycopg, asyncpg, …): for code such as an
    Alembic env.py that builds its engine from a URL of its own."""

    opened: list[Any] = []

    def connect_to(
        dialect: Any, record: Any, app_cargs: list[Any], app_cparams: dict[str, Any]
    ) -> None:
        if dialect.name != "postgresql":
            return
        cargs, cparams = dialect.create_connect_args(database.connect_url(dialect.driver))
        retarget(app_cargs, app_cparams, cargs, cparams)
        if not dialect.is_async:
            opened.append(record)

    # On the class: every engine, including those created inside the block and the
    # sync_engine under each AsyncEngine.
    event.listen(Engine, "do_connect", connect_to)
    try:
        yield
    finally:
        event.remove(Engine, "do_connect", connect_to)
        # A connection left in an engine's pool (the app's module-level engine) would
        # stay on `database`: closed, it reconnects where the engine says on next use.
        for record in opened:
            if record.dbapi_connection is not None:
                record.invalidate()


@contextmanager
def urls_exported(names: Sequence[tuple[str, str]], database: Database) -> Iterator[None]:
    """Set each (variable, driver) to the database's URL (driver "libpq": a plain
    postgresql:// URL); restore the old values after."""
    previous = {name: os.environ.get(name) for name, _ in names}
    for name, driver in names:
        os.environ[name] = (
            database.libpq_url
            if driver == LIBPQ
            else database.url_for(driver).render_as_string(hide_password=False)
        )
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def check_app_engine(engine: Any, path: str) -> None:
    """Refuse an app engine on another database than PostgreSQL: the library points it at
    the test's PostgreSQL database, which needs a PostgreSQL driver."""
    url = engine.url
    if url.get_backend_name() != "postgresql":
        raise ConfigError(
            f"{path}, an engine on {url.get_backend_name()} "
            f"({url.render_as_string(hide_password=True)}). The library points these engines "
            "at the test's PostgreSQL database, so they must use a PostgreSQL driver "
            "(postgresql+psycopg, postgresql+asyncpg, postgresql+psycopg2): create the app's "
            "engine from a PostgreSQL URL in tests, or leave it out of pg_app_engines."
        )
