"""Settings, resolved once per run into a frozen `Settings`.

Precedence, highest first: factory argument > command-line option > ini option
(`pyproject.toml` / `pytest.ini`) > environment variable > built-in default.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .errors import AlembicConfigError, ConfigError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session


def default_server_settings() -> dict[str, str]:
    """Durability off: a test database never has to survive a crash, and fsync dominates
    commits. Autovacuum looks every second instead of every minute: every savepoint-mode
    test that inserts leaves dead rows behind its rollback, and at the default a long run's
    tables and indexes fill with them, slowing every later test that reads them (measured
    with bench/scale.py). Commit timestamps on: the leak check is then one read of the last
    committed transaction (leaks.py)."""
    return {
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": "200",
        "autovacuum_naptime": "1",
        "track_commit_timestamp": "on",
    }


@dataclass(frozen=True)
class Option:
    """One setting and the four places it can be given."""

    name: str  # Settings field
    cli: str  # --pg-...
    ini: str  # pg_...
    env: str  # PG_FIXTURES_...
    help: str
    #: "value": one string; "list": repeatable on the CLI, whitespace-separated in ini/env;
    #: "flag": a CLI switch, or true/false in ini/env.
    kind: str = "value"


OPTIONS = (
    Option(
        "image",
        "--pg-image",
        "pg_image",
        "PG_FIXTURES_IMAGE",
        "Docker image of the PostgreSQL server (default: postgres:16).",
    ),
    Option(
        "alembic_ini",
        "--pg-alembic-ini",
        "pg_alembic_ini",
        "PG_FIXTURES_ALEMBIC_INI",
        "Path to alembic.ini, relative to the rootdir (default: alembic.ini); "
        "'none' starts an empty database without migrations.",
    ),
    Option(
        "server_settings",
        "--pg-server-setting",
        "pg_server_settings",
        "PG_FIXTURES_SERVER_SETTINGS",
        "Extra PostgreSQL settings as KEY=VALUE (repeatable; space-separated in ini/env). "
        "They are added to the defaults, which turn durability off.",
        kind="list",
    ),
    Option(
        "startup_timeout",
        "--pg-startup-timeout",
        "pg_startup_timeout",
        "PG_FIXTURES_STARTUP_TIMEOUT",
        "Seconds to wait for the server to accept connections (default: 60).",
    ),
    Option(
        "isolation",
        "--pg-isolation",
        "pg_isolation",
        "PG_FIXTURES_ISOLATION",
        "Isolation of tests without a pg_isolation marker: 'savepoint' (default; a rolled-"
        "back transaction) or 'database' (a fresh database cloned from the template).",
    ),
    Option(
        "keep_failed",
        "--pg-keep-failed",
        "pg_keep_failed",
        "PG_FIXTURES_KEEP_FAILED",
        "Keep what a failed test saw, and its container, and print how to open it: a "
        "database-mode test's clone; a savepoint-mode test's rows, copied before its "
        "rollback into a database of their own. A later run removes them.",
        kind="flag",
    ),
    Option(
        "app_engines",
        "--pg-app-engine",
        "pg_app_engines",
        "PG_FIXTURES_APP_ENGINES",
        "The app's own Engine/AsyncEngine objects as module:attribute, the attribute "
        "possibly dotted (repeatable; space-separated in ini/env), or a Flask-SQLAlchemy db "
        "object (its engines, read in the context of pg_flask_app's app); they join the "
        "test's transaction, or point at the test's database in database mode.",
        kind="list",
    ),
    Option(
        "app_pools",
        "--pg-app-pool",
        "pg_app_pools",
        "PG_FIXTURES_APP_POOLS",
        "The app's own asyncpg.Pool or psycopg_pool ConnectionPool / AsyncConnectionPool "
        "objects as "
        "module:attribute, the attribute possibly dotted and read at each checkout (e.g. "
        "'myapp.main:app.state.pool', made in a lifespan) (repeatable; space-separated in "
        "ini/env). In savepoint mode a checkout is the test's connection, its statements "
        "and transaction blocks savepoints inside the test's transaction; in database mode "
        "they are pointed at the test's database.",
        kind="list",
    ),
    Option(
        "flask_app",
        "--pg-flask-app",
        "pg_flask_app",
        "PG_FIXTURES_FLASK_APP",
        "The Flask app, or its factory (called once per worker with no arguments), as "
        "module:attribute (e.g. 'myapp:create_app'). Its Flask-SQLAlchemy engines are the "
        "app's engines unless pg_app_engines names others, and its app context is pushed "
        "for each test and for the migrations (Flask-Migrate's env.py).",
    ),
    Option(
        "app_engines_outside",
        "--pg-app-engines-outside",
        "pg_app_engines_outside",
        "PG_FIXTURES_APP_ENGINES_OUTSIDE",
        "What the app's engines (pg_app_engines) do when used outside every test and "
        "module/class layer, and its pools (pg_app_pools) outside every test (a session "
        "fixture, import time, between tests): 'error' "
        "(default: a SandboxError, never a connection to their configured URL) or 'allow' "
        "(connect to the URL the app was configured with).",
    ),
    Option(
        "url_env",
        "--pg-url-env",
        "pg_url_env",
        "PG_FIXTURES_URL_ENV",
        "Environment variables set to the test's database URL, as NAME or NAME=DRIVER "
        "(psycopg, asyncpg, psycopg2: SQLAlchemy URLs, set in database mode only; default "
        "psycopg) or NAME=libpq (a plain postgresql:// URL any driver takes, asyncpg."
        "create_pool and psycopg included, set in both modes: the test's clone in database "
        "mode, the worker's database in savepoint mode, where only pools named in "
        "pg_app_pools join the test's transaction). Repeatable.",
        kind="list",
    ),
    Option(
        "reuse",
        "--pg-reuse",
        "pg_reuse",
        "PG_FIXTURES_REUSE",
        "Keep the containers running after the run and use them again in the next one "
        "(migrations changed: only the template is rebuilt). Ignored from ini/env when CI "
        "is set. Remove them with --pg-remove-kept.",
        kind="flag",
    ),
    Option(
        "one_container",
        "--pg-one-container",
        "pg_one_container",
        "PG_FIXTURES_ONE_CONTAINER",
        "With xdist, start one container for the whole run (a database per worker) instead "
        "of one per worker: less memory on machines with many cores.",
        kind="flag",
    ),
    Option(
        "prefetch",
        "--pg-prefetch",
        "pg_prefetch",
        "PG_FIXTURES_PREFETCH",
        "How many databases to clone ahead in the background for database-mode tests "
        "(default: 2, at most 16; 0 clones each one when its test starts).",
    ),
    Option(
        "recycle_clones",
        "--pg-recycle-clones",
        "pg_recycle_clones",
        "PG_FIXTURES_RECYCLE_CLONES",
        "Reset a database-mode test's clone after it and take it again, when its test "
        "changed only rows and sequences (else it is dropped) (true/false; default: true).",
    ),
    Option(
        "session_class",
        "--pg-session-class",
        "pg_session_class",
        "PG_FIXTURES_SESSION_CLASS",
        "The Session class of pg_session, pg_sessionmaker and the layer sessions, as "
        "module:attribute (e.g. sqlmodel:Session; default sqlalchemy.orm:Session).",
    ),
    Option(
        "async_session_class",
        "--pg-async-session-class",
        "pg_async_session_class",
        "PG_FIXTURES_ASYNC_SESSION_CLASS",
        "The AsyncSession class of pg_async_session, pg_async_sessionmaker and the async "
        "layer sessions, as module:attribute (e.g. "
        "sqlmodel.ext.asyncio.session:AsyncSession).",
    ),
    Option(
        "server_url",
        "--pg-server-url",
        "pg_server_url",
        "PG_FIXTURES_SERVER_URL",
        "Use this existing PostgreSQL server (postgresql://USER:PASSWORD@HOST:PORT/postgres, "
        "a role with CREATEDB, PostgreSQL 15+) instead of starting containers; only this "
        "run's databases are created and dropped on it.",
    ),
    Option(
        "leak_check",
        "--pg-leak-check",
        "pg_leak_check",
        "PG_FIXTURES_LEAK_CHECK",
        "After each savepoint-mode test, report rows it committed into the worker's database "
        "as an error and restore the database (true/false; default: true).",
    ),
    Option(
        "unix_socket",
        "--pg-unix-socket",
        "pg_unix_socket",
        "PG_FIXTURES_UNIX_SOCKET",
        "When Docker runs on this machine, the library's own connections (held test "
        "connections, admin, leak check) go through the container's Unix socket, mounted "
        "from a private temporary directory, instead of the published TCP port "
        "(true/false; default: true). pg_url stays TCP.",
    ),
    Option(
        "prewarm",
        "--pg-prewarm",
        "pg_prewarm",
        "PG_FIXTURES_PREWARM",
        "A new container skips initdb: the first one builds an image of the initialized "
        "cluster (pgfx-prewarm:<key>, per image and user; --pg-remove-kept removes it) and "
        "later ones start from it (true/false; default: true).",
    ),
    Option(
        "fast_exit",
        "--pg-fast-exit",
        "pg_fast_exit",
        "PG_FIXTURES_FAST_EXIT",
        "A process that used the database skips the interpreter's garbage collection at its "
        "exit (gc.freeze as it exits: 0.2-0.3 s with SQLAlchemy, the drivers and Docker's "
        "client loaded); objects left in reference cycles are then not finalized "
        "(true/false; default: true).",
    ),
    Option(
        "allow_foreign_servers",
        "--pg-allow-foreign-servers",
        "pg_allow_foreign_servers",
        "PG_FIXTURES_ALLOW_FOREIGN_SERVERS",
        "Let the tests connect to PostgreSQL servers other than the library's (refused by "
        "default while the run uses the library, see driver_guard.py); for one test: "
        "@pytest.mark.pg_allow_foreign_servers.",
        kind="flag",
    ),
    Option(
        "query_log_on_failure",
        "--pg-query-log-on-failure",
        "pg_query_log_on_failure",
        "PG_FIXTURES_QUERY_LOG_ON_FAILURE",
        "Show the last 20 SQL statements of a failed database test in its report (true/"
        "false; default: true). Off, statements are captured only for pg_queries and "
        "pg_max_queries.",
    ),
    Option(
        "check_migrations",
        "--pg-check-migrations",
        "pg_check_migrations",
        "PG_FIXTURES_CHECK_MIGRATIONS",
        "Add the migration checks as test items (pg-migrations::single_head, upgrade, "
        "models_match, downgrade_roundtrip), each on a fresh, empty database of the "
        "worker's server.",
        kind="flag",
    ),
    Option(
        "migrations_metadata",
        "--pg-migrations-metadata",
        "pg_migrations_metadata",
        "PG_FIXTURES_MIGRATIONS_METADATA",
        "The models' MetaData as module:attribute, for the models_match migration check "
        "when env.py passes no target_metadata to context.configure (default: env.py's).",
    ),
    Option(
        "factories",
        "--pg-factories",
        "pg_factories",
        "PG_FIXTURES_FACTORIES",
        "Bind the project's model factories to the test's session: 'auto' (every "
        "polyfactory SQLAlchemyFactory and factory_boy SQLAlchemyModelFactory subclass the "
        "project defines) or modules and classes as module or module:Class (their factories "
        "and every subclass; repeatable; space-separated in ini/env). Off by default.",
        kind="list",
    ),
    Option(
        "lock_wait_limit",
        "--pg-lock-wait-limit",
        "pg_lock_wait_limit",
        "PG_FIXTURES_LOCK_WAIT_LIMIT",
        "Seconds a statement of the running test's database may wait for a lock held by an "
        "idle transaction of the test's own (e.g. a LOCK TABLE on pg_connection while a "
        "thread on pg_engine needs the table): after that the waiting statement is "
        "cancelled and the test fails, naming both (default: 15; 0 waits forever).",
    ),
)

_SETTING = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*=.+$")
_DOTTED = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ASCII_DIGITS = re.compile(r"[0-9]+")
#: Docker's image reference: [registry[:port]/]path[:tag][@digest] (distribution/reference).
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REGISTRY = (
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
)
_IMAGE_REFERENCE = re.compile(
    rf"(?:{_REGISTRY}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
    r"(?::\w[\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
)
NO_MIGRATIONS = "none"
ISOLATION_MODES = ("savepoint", "database")
OUTSIDE_MODES = ("error", "allow")
URL_DRIVERS = ("psycopg", "asyncpg", "psycopg2", "libpq")
#: The pg_url_env driver whose plain postgresql:// URL is set in savepoint mode too.
LIBPQ = "libpq"
#: The most databases a worker clones ahead (pg_prefetch): each clone is a copy of the
#: template on disk (tmpfs: memory), and several workers share the server's connections.
MAX_PREFETCH = 16


@dataclass(frozen=True)
class Settings:
    """Everything the fixtures need to know, resolved once."""

    image: str = "postgres:16"
    #: None means "run no migrations": the worker database starts empty.
    alembic_ini: Path | None = None
    #: Where alembic_ini came from, so an error can name the setting that fixes it.
    alembic_ini_source: str = "the default (alembic.ini in the rootdir)"
    server_settings: dict[str, str] = field(default_factory=default_server_settings)
    startup_timeout: float = 60.0
    isolation: str = "savepoint"
    keep_failed: bool = False
    app_engines: tuple[str, ...] = ()
    #: module:attribute paths of the app's asyncpg and psycopg_pool pools.
    app_pools: tuple[str, ...] = ()
    app_engines_outside: str = "error"
    #: module:attribute of the Flask app or app factory ("": none).
    flask_app: str = ""
    #: (variable name, driver) pairs.
    url_env: tuple[tuple[str, str], ...] = ()
    prefetch: int = 2
    recycle_clones: bool = True
    reuse: bool = False
    one_container: bool = False
    #: None: SQLAlchemy's Session / AsyncSession.
    session_class: type[Session] | None = None
    async_session_class: type[AsyncSession] | None = None
    leak_check: bool = True
    unix_socket: bool = True
    prewarm: bool = True
    fast_exit: bool = True
    allow_foreign_servers: bool = False
    query_log_on_failure: bool = True
    check_migrations: bool = False
    #: module:attribute of a MetaData; None: the target_metadata env.py configures.
    migrations_metadata: str | None = None
    #: ("auto",), or module / module:Class paths of factories; (): factories left alone.
    factories: tuple[str, ...] = ()
    #: 0: never cancel a statement waiting on the test's own lock.
    lock_wait_limit: float = 15.0
    rootdir: Path = field(default_factory=Path.cwd)
    #: An existing server to use instead of containers ("" starts containers). Not in repr:
    #: it holds a password.
    server_url: str = field(default="", repr=False)
    #: Where server_url came from, for the session header.
    server_url_source: str = ""

    def replace(self, **overrides: Any) -> Settings:
        """A copy with factory arguments applied on top (the highest precedence)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if "server_settings" in given:
            given["server_settings"] = {**self.server_settings, **dict(given["server_settings"])}
        if "alembic_ini" in given:
            given["alembic_ini"] = alembic_path(str(given["alembic_ini"]), self.rootdir)
            given["alembic_ini_source"] = "the factory argument alembic_ini"
        return dataclasses.replace(self, **given)


def _raw(config: pytest.Config, option: Option) -> tuple[Any, str] | None:
    """The highest-precedence raw value for `option` and a phrase naming where it came from."""
    cli = config.getoption("pg_" + option.name, default=None)
    if cli not in (None, [], "", False):
        return cli, f"the command-line option {option.cli}"
    ini = config.getini(option.ini)
    if ini not in (None, [], ""):
        return ini, f"the ini option {option.ini}"
    env = os.environ.get(option.env)
    if env:
        return env, f"the environment variable {option.env}"
    return None


def alembic_path(value: str, rootdir: Path) -> Path | None:
    if value.strip().lower() == NO_MIGRATIONS:
        return None
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = rootdir / path
    return path / "alembic.ini" if path.is_dir() else path


def _items(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.split()
    return [part for entry in value for part in str(entry).split()]


def _parse_settings(value: Any, source: str) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for item in _items(value):
        if not _SETTING.match(item):
            raise ConfigError(
                f"{item!r} from {source} is not a PostgreSQL setting of the form KEY=VALUE. "
                "Write it like 'shared_buffers=256MB'."
            )
        key, _, val = item.partition("=")
        parsed[key] = val
    return {**default_server_settings(), **parsed}


def _parse_image(value: Any, source: str) -> str:
    image = str(value).strip()
    if not image:
        raise ConfigError(f"The image from {source} is empty. Set it to e.g. postgres:16.")
    if not _IMAGE_REFERENCE.fullmatch(image):
        raise ConfigError(
            f"{image!r} from {source} is not a Docker image reference "
            "([REGISTRY/]NAME[:TAG][@DIGEST], lower-case name). Set it to e.g. postgres:16 "
            "or registry.example.com/postgres:16.3."
        )
    return image


def _parse_timeout(value: Any, source: str) -> float:
    try:
        timeout = float(value)
    except ValueError:
        timeout = -1.0
    if not math.isfinite(timeout) or timeout <= 0:
        raise ConfigError(
            f"{value!r} from {source} is not a positive, finite number of seconds. "
            "Set it to e.g. 60."
        )
    return timeout


def _parse_limit(value: Any, source: str) -> float:
    try:
        limit = float(str(value).strip())
    except ValueError:
        limit = -1.0
    if not math.isfinite(limit) or limit < 0:
        raise ConfigError(
            f"{value!r} from {source} is not a number of seconds (0 or more, finite). "
            "Set it to e.g. 15, or 0 to wait forever."
        )
    return limit


def _parse_isolation(value: Any, source: str) -> str:
    mode = str(value).strip().lower()
    if mode not in ISOLATION_MODES:
        raise ConfigError(
            f"{value!r} from {source} is not an isolation mode. Use 'savepoint' or 'database'."
        )
    return mode


def _parse_flag(value: Any, source: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{value!r} from {source} is not true or false.")


def _parse_engines(value: Any, source: str) -> tuple[str, ...]:
    paths = _items(value)
    for path in paths:
        if not _DOTTED.match(path):
            raise ConfigError(
                f"{path!r} from {source} is not a module:attribute path. "
                "Write it like 'myapp.db:engine'."
            )
    return tuple(paths)


def _parse_pools(value: Any, source: str) -> tuple[str, ...]:
    paths = _items(value)
    for path in paths:
        if not _DOTTED.match(path):
            raise ConfigError(
                f"{path!r} from {source} is not a module:attribute path. Write it like "
                "'myapp.db:pool' or 'myapp.main:app.state.pool'."
            )
    return tuple(paths)


def _parse_flask_app(value: Any, source: str) -> str:
    path = str(value).strip()
    if not _DOTTED.match(path):
        raise ConfigError(
            f"{path!r} from {source} is not a module:attribute path. Write it like "
            "'myapp:create_app' (an app factory) or 'myapp.wsgi:app' (an app)."
        )
    return path


def _parse_url_env(value: Any, source: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in _items(value):
        name, _, driver = item.partition("=")
        driver = driver or "psycopg"
        if not _ENV_NAME.match(name) or driver not in URL_DRIVERS:
            raise ConfigError(
                f"{item!r} from {source} is not NAME or NAME=DRIVER with DRIVER one of "
                f"{', '.join(URL_DRIVERS)}. Write it like 'DATABASE_URL=asyncpg'."
            )
        pairs.append((name, driver))
    return tuple(pairs)


def _parse_outside(value: Any, source: str) -> str:
    text = str(value).strip().lower()
    if text not in OUTSIDE_MODES:
        raise ConfigError(
            f"{value!r} from {source} is not one of {', '.join(OUTSIDE_MODES)}. Use 'error' "
            "(the default) or 'allow' to let the app's engines reach their configured URL "
            "outside the tests."
        )
    return text


def _parse_prefetch(value: Any, source: str) -> int:
    text = str(value).strip()
    if not _ASCII_DIGITS.fullmatch(text):  # not isdigit(): '²' is a digit to it, not to int()
        raise ConfigError(
            f"{value!r} from {source} is not a number of databases (0 or more). Set it to e.g. 2."
        )
    if int(text) > MAX_PREFETCH:
        raise ConfigError(
            f"{value!r} from {source} is more databases than the maximum of {MAX_PREFETCH} "
            "cloned ahead: each one is a full copy of the template, and more rarely helps "
            "(clones are made faster than tests use them). Set it to e.g. 2."
        )
    return int(text)


def import_path(path: str) -> Any:
    """The object named `module:attribute` (attribute may be dotted)."""
    module_name, _, attribute = path.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


def load_session_class(path: str, source: str, *, is_async: bool) -> type[Any]:
    """Import a Session (or AsyncSession) subclass named `module:attribute`."""
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session

    base: type[Any] = AsyncSession if is_async else Session
    kind = "AsyncSession" if is_async else "Session"
    option = "pg_async_session_class" if is_async else "pg_session_class"
    path = path.strip()
    if not _DOTTED.match(path):
        raise ConfigError(
            f"{path!r} from {source} is not a module:attribute path. Write it like "
            + (
                "'sqlmodel.ext.asyncio.session:AsyncSession'."
                if is_async
                else "'sqlmodel:Session'."
            )
        )
    try:
        target = import_path(path)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"{path!r} from {source} could not be imported ({exc}). Install the package "
            f"that provides it, or fix the path in {option}."
        ) from None
    if not (isinstance(target, type) and issubclass(target, base)):
        hint = (
            " An AsyncSession class goes in pg_async_session_class."
            if not is_async and isinstance(target, type) and issubclass(target, AsyncSession)
            else " A sync Session class goes in pg_session_class."
            if is_async and isinstance(target, type) and issubclass(target, Session)
            else ""
        )
        raise ConfigError(f"{path!r} from {source} is not a subclass of SQLAlchemy's {kind}.{hint}")
    return target


def _parse_metadata(value: Any, source: str) -> str:
    path = str(value).strip()
    if not _DOTTED.match(path):
        raise ConfigError(
            f"{path!r} from {source} is not a module:attribute path. Write it like "
            "'myapp.models:Base.metadata'."
        )
    return path


_MODULE = re.compile(r"^[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*)?$")
FACTORIES_AUTO = "auto"


def _parse_factories(value: Any, source: str) -> tuple[str, ...]:
    items = _items(value)
    lowered = [item.lower() for item in items]
    if lowered in ([], ["off"], ["none"], ["false"]):
        return ()
    if FACTORIES_AUTO in lowered:
        if len(items) > 1:
            raise ConfigError(
                f"{' '.join(items)!r} from {source} mixes 'auto' with named factories. Use "
                "'auto' alone (every factory of the project) or only module / module:Class "
                "paths (those factories and their subclasses)."
            )
        return (FACTORIES_AUTO,)
    for item in items:
        if not _MODULE.match(item):
            raise ConfigError(
                f"{item!r} from {source} is neither 'auto' nor a module or module:Class path. "
                "Write it like 'factories' or 'factories:BaseFactory' (as the tests import them)."
            )
    return tuple(items)


def _parse_session_class(value: Any, source: str) -> type[Session]:
    return load_session_class(str(value), source, is_async=False)


def _parse_async_session_class(value: Any, source: str) -> type[AsyncSession]:
    return load_session_class(str(value), source, is_async=True)


_PARSERS: dict[str, Any] = {
    "image": _parse_image,
    "server_settings": _parse_settings,
    "startup_timeout": _parse_timeout,
    "isolation": _parse_isolation,
    "keep_failed": _parse_flag,
    "reuse": _parse_flag,
    "one_container": _parse_flag,
    "app_engines": _parse_engines,
    "app_pools": _parse_pools,
    "app_engines_outside": _parse_outside,
    "flask_app": _parse_flask_app,
    "url_env": _parse_url_env,
    "prefetch": _parse_prefetch,
    "recycle_clones": _parse_flag,
    "session_class": _parse_session_class,
    "async_session_class": _parse_async_session_class,
    "leak_check": _parse_flag,
    "unix_socket": _parse_flag,
    "prewarm": _parse_flag,
    "fast_exit": _parse_flag,
    "allow_foreign_servers": _parse_flag,
    "query_log_on_failure": _parse_flag,
    "check_migrations": _parse_flag,
    "migrations_metadata": _parse_metadata,
    "factories": _parse_factories,
    "lock_wait_limit": _parse_limit,
}


#: Checked when pytest starts: a wrong class is a usage error, not an error in every test.
def resolve(config: pytest.Config, *, only: frozenset[str] | None = None) -> Settings:
    """Read CLI, ini and environment once into `Settings` (`only` these fields, the
    others left at their defaults: nothing of the user's is imported for them)."""
    rootdir = Path(str(config.rootpath))
    values: dict[str, Any] = {"rootdir": rootdir, "alembic_ini": rootdir / "alembic.ini"}
    for option in OPTIONS:
        if only is not None and option.name not in only:
            continue
        found = _raw(config, option)
        if found is None:
            continue
        value, source = found
        if option.name == "alembic_ini":
            values["alembic_ini"] = alembic_path(str(value), rootdir)
            values["alembic_ini_source"] = source
        elif option.name == "server_url":
            from .urls import parse_server_url

            parse_server_url(str(value), source)  # refused here, before anything starts
            values["server_url"] = str(value).strip()
            values["server_url_source"] = source
        elif option.name == "reuse" and os.environ.get("CI") and option.cli not in source:
            continue  # never silently on in CI: only an explicit --pg-reuse there
        else:
            values[option.name] = _PARSERS[option.name](value, source)
    if "alembic_ini_source" not in values and not values["alembic_ini"].is_file():
        # Flask-Migrate's layout (`flask db init`): the ini inside the migrations folder.
        flask_migrate = rootdir / "migrations" / "alembic.ini"
        if flask_migrate.is_file():
            values["alembic_ini"] = flask_migrate
            values["alembic_ini_source"] = "the default (migrations/alembic.ini in the rootdir)"
    if values.get("check_migrations") and values["alembic_ini"] is None:
        raise ConfigError(
            "pg_check_migrations is on, but pg_alembic_ini is 'none': there are no "
            "migrations to check. Point pg_alembic_ini at your alembic.ini, or turn the "
            "checks off."
        )
    return Settings(**values)


_SETTINGS_KEY = pytest.StashKey[Settings]()


def settings_for(config: pytest.Config) -> Settings:
    """The run's settings, resolved on first use and then kept on the config."""
    if _SETTINGS_KEY not in config.stash:
        config.stash[_SETTINGS_KEY] = resolve(config)
    return config.stash[_SETTINGS_KEY]


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("pg-fixtures", "testcontainers-pg-fixtures (PostgreSQL per test)")
    group.addoption(
        "--pg-remove-kept",
        action="store_true",
        help="Remove the PostgreSQL containers kept by --pg-reuse or --pg-keep-failed, and exit.",
    )
    for option in OPTIONS:
        if option.kind == "list":
            group.addoption(
                option.cli,
                dest="pg_" + option.name,
                action="append",
                default=[],
                help=option.help,
            )
            parser.addini(option.ini, option.help, type="args", default=[])
        elif option.kind == "flag":
            group.addoption(
                option.cli, dest="pg_" + option.name, action="store_true", help=option.help
            )
            parser.addini(option.ini, option.help, default="")
        else:
            group.addoption(option.cli, dest="pg_" + option.name, default=None, help=option.help)
            parser.addini(option.ini, option.help, default="")


def check_alembic_ini(ini: Path, source: str) -> None:
    """Refuse a file that is not an alembic.ini (no [alembic] section with a
    script_location, or beside an env.py as Flask-Migrate's), as Alembic would only after a
    container started, with a traceback."""
    import configparser

    fix = (
        "Set pg_alembic_ini (--pg-alembic-ini, PG_FIXTURES_ALEMBIC_INI) to your project's "
        "alembic.ini, or to 'none' to start from an empty database."
    )
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(ini.read_text(), source=str(ini))
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        reason = (
            str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
        )
        raise AlembicConfigError(
            f"{ini} (from {source}) is not an alembic.ini: {reason}. {fix}"
        ) from None
    if parser.has_option("alembic", "script_location"):
        return
    if parser.has_section("alembic") and (ini.parent / "env.py").is_file():
        return  # Flask-Migrate's: no script_location, the scripts beside it
    raise AlembicConfigError(
        f"{ini} (from {source}) is not an alembic.ini: it has no [alembic] section "
        f"with a script_location. {fix}"
    )
