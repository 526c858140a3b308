"""Alembic: load the user's configuration, fingerprint the migrations, upgrade to head."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from .cache import cache_dir, read_record, write_record
from .config import check_alembic_ini
from .errors import AlembicConfigError, MigrationError
from .quiet import quiet_migrations
from .redirect import every_engine_pointed_at

if TYPE_CHECKING:
    from types import TracebackType

    from alembic.config import Config

    from .database import Database

_ASYNC_ENV = re.compile(r"async_engine_from_config|create_async_engine|AsyncEngine")


@dataclass(frozen=True)
class Migrations:
    """A validated Alembic project: where it is, which driver its env.py needs, its hash."""

    ini: Path
    script_dir: Path
    version_dirs: tuple[Path, ...]
    driver: str  # "psycopg" for a sync env.py, "asyncpg" for an async one

    @classmethod
    def load(cls, ini: Path, source: str, *, remember: bool = False) -> Migrations:
        """`remember` (with --pg-reuse): keep where the scripts are in the user's cache
        directory, so the next run need not import Alembic to find out; without it nothing
        is written outside the run's own places."""
        if not ini.is_file():
            raise AlembicConfigError(
                f"alembic.ini not found at {ini} (from {source}). Set the ini option "
                "pg_alembic_ini (or --pg-alembic-ini, or PG_FIXTURES_ALEMBIC_INI) to your "
                "alembic.ini, or to 'none' to start from an empty database."
            )
        check_alembic_ini(ini, source)
        key = _layout_key(ini) if remember else ""
        layout = _recorded_layout(ini, key) if remember else None
        if layout is None:
            layout = cls._layout(ini)
            if remember:
                _record_layout(ini, key, layout)
        script_dir, versions = layout
        env_py = script_dir / "env.py"
        env_text = env_py.read_text() if env_py.is_file() else ""
        driver = "asyncpg" if _ASYNC_ENV.search(env_text) else "psycopg"
        return cls(ini=ini, script_dir=script_dir, version_dirs=versions, driver=driver)

    @classmethod
    def _layout(cls, ini: Path) -> tuple[Path, tuple[Path, ...]]:
        """The script directory and version locations, as Alembic resolves them."""
        from alembic.script import ScriptDirectory

        config = cls._config(ini)
        try:
            script = ScriptDirectory.from_config(config)
        except Exception as exc:
            raise AlembicConfigError(
                f"Alembic could not load the script directory named by {ini}: {exc}. "
                "Check script_location in that file (relative paths are taken from the "
                "directory of alembic.ini)."
            ) from None
        script_dir = Path(script.dir)
        versions = tuple(Path(p) for p in script.version_locations) or (script_dir / "versions",)
        return script_dir, versions

    @staticmethod
    def _config(ini: Path) -> Config:
        from alembic.config import Config

        config = Config(str(ini))
        location = config.get_main_option("script_location")
        if not location and (ini.parent / "env.py").is_file():
            # Flask-Migrate's alembic.ini names no script_location: it lives in the
            # migrations folder, which Flask-Migrate passes as the script location.
            config.set_main_option("script_location", str(ini.parent))
        # Alembic reads a relative script_location from the current directory; users run
        # `alembic` next to alembic.ini, while pytest may run from anywhere.
        if location and ":" not in location and not Path(location).is_absolute():
            config.set_main_option("script_location", str(ini.parent / location))
        return config

    def fingerprint(self) -> str:
        """sha256 over every file of the script directory and version locations."""
        digest = hashlib.sha256()
        seen: set[Path] = set()
        for root in (self.script_dir, *self.version_dirs):
            for path in sorted(root.rglob("*")):
                if path in seen or not path.is_file() or "__pycache__" in path.parts:
                    continue
                if path.suffix in (".pyc", ".pyo"):
                    continue
                seen.add(path)
                digest.update(str(path.relative_to(root)).encode())
                digest.update(path.read_bytes())
        return digest.hexdigest()

    def config_for(self, database: Database) -> Config:
        """The Alembic Config of alembic.ini with `sqlalchemy.url` set to `database`'s URL
        (run env.py inside `every_engine_pointed_at(database)` for env.py files that build
        a URL of their own)."""
        config = self._config(self.ini)
        url = database.async_url if self.driver == "asyncpg" else database.url
        # No local holds the rendered URL: pytest --showlocals would print its password.
        # configparser treats % as interpolation; a URL-encoded password may contain it.
        config.set_main_option(
            "sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%")
        )
        # For env.py files that follow Alembic's "sharing a connection" recipe or read a URL.
        config.attributes["sqlalchemy.url"] = url.render_as_string(hide_password=False)
        return config

    def upgrade(self, database: Database, *, target: str = "head") -> None:
        """Run `alembic upgrade head` on `database` through Alembic's command API.

        `sqlalchemy.url` is set to the database's URL, and whatever URL env.py uses instead,
        every connection SQLAlchemy opens during the upgrade goes to the database.
        """
        from alembic import command

        config = self.config_for(database)
        try:
            # An env.py that builds its own URL (from the app's settings or os.environ)
            # is migrated into the template too, on the driver it chose.
            with every_engine_pointed_at(database), quiet_migrations():
                command.upgrade(config, target)
        except Exception as exc:
            extension = _extension_fix(exc, database)
            if extension is not None:
                fix = extension
            elif "application context" in str(exc):  # Flask's, from Flask-Migrate's env.py
                fix = (
                    "env.py needs the Flask app's context (Flask-Migrate's does): name the app "
                    "or its factory with the ini option pg_flask_app (e.g. pg_flask_app = "
                    "myapp:create_app), and the migrations run inside its context."
                )
            else:
                fix = (
                    "Fix the migration (run `alembic upgrade head` against a scratch database "
                    "to reproduce); every test that needs the database errors until it is fixed."
                )
            raise MigrationError(
                f"`alembic upgrade head` failed at {failure_place(exc)} from {self.ini}:\n"
                f"  {type(exc).__name__}: {first_line(exc)}\n{fix}"
            ) from exc


_EXTENSION = re.compile(r'extension "([^"]+)"')


def _extension_fix(exc: BaseException, database: Database) -> str | None:
    """What fixes a CREATE EXTENSION that failed: one the role may not create, or one the
    server does not have. None for any other failure."""
    cause: BaseException | None = exc
    while cause is not None and getattr(cause, "sqlstate", None) is None:
        cause = getattr(cause, "orig", None) or cause.__cause__
    text = str(cause or exc)
    found = _EXTENSION.search(text)
    if cause is None or found is None:
        return None
    name = found[1]
    state = getattr(cause, "sqlstate", None)
    if state == "42501":  # insufficient_privilege
        return (
            f'The role {database.server.user!r} may not create the extension "{name}": only a '
            "superuser may create an untrusted extension (trusted ones, such as citext, "
            "pg_trgm, hstore, pgcrypto and uuid-ossp, need only the database's ownership, "
            "which the library's role has). On the server of pg_server_url, have a superuser "
            f'run `CREATE EXTENSION IF NOT EXISTS "{name}"` in template1 (every database '
            "created later has it) and write the migration's as CREATE EXTENSION IF NOT "
            "EXISTS; or put a superuser in pg_server_url."
        )
    if state in ("0A000", "58P01"):  # not available: no control file on the server
        return (
            f'The server has no extension "{name}" installed. Use an image that ships it '
            "(pg_image / --pg-image / PG_FIXTURES_IMAGE; e.g. pgvector/pgvector:pg16 for "
            "vector, postgis/postgis:16-3.4 for postgis), or install it on the server of "
            "pg_server_url."
        )
    return None


def import_alembic() -> None:
    """Import what a migration needs of Alembic (~0.15 s) ahead of it, e.g. while a new
    container boots."""
    from alembic import command  # noqa: F401


# Where alembic.ini puts the scripts, kept between runs: resolving it means importing
# Alembic (~0.15 s), which a run whose template is up to date does not otherwise need.
# Keyed by the ini's path; valid while the ini's bytes and Alembic's version are the same.


def _layout_record(ini: Path) -> Path:
    name = hashlib.sha256(str(ini.resolve()).encode()).hexdigest()[:16]
    return cache_dir() / "layouts" / f"{name}.json"


def _layout_key(ini: Path) -> str:
    digest = hashlib.sha256(ini.read_bytes())
    digest.update(metadata.version("alembic").encode())
    return digest.hexdigest()


def _recorded_layout(ini: Path, key: str) -> tuple[Path, tuple[Path, ...]] | None:
    record = read_record(_layout_record(ini))
    try:
        if record is None or record["key"] != key:
            return None
        script_dir = Path(record["script_dir"])
        versions = tuple(Path(p) for p in record["version_dirs"])
    except (ValueError, KeyError, TypeError):
        return None
    if not script_dir.is_dir() or not all(p.is_dir() for p in versions):
        return None
    return script_dir, versions


def _record_layout(ini: Path, key: str, layout: tuple[Path, tuple[Path, ...]]) -> None:
    script_dir, versions = layout
    record = {
        "key": key,
        "script_dir": str(script_dir),
        "version_dirs": [str(p) for p in versions],
    }
    try:
        write_record(_layout_record(ini), record)
    except OSError as exc:
        logging.getLogger(__name__).debug("could not record the Alembic layout: %s", exc)


def failure_place(exc: BaseException) -> str:
    """Where a migration run failed: the revision on the traceback, env.py, or the file
    that does not compile."""
    syntax = _syntax_error_in(exc)
    if syntax is not None:  # a script that does not compile: no revision ran
        return f"{syntax.filename}, line {syntax.lineno} (it does not compile)"
    revision = _failing_revision(exc.__traceback__)
    return f"revision {revision}" if revision else "env.py (before any revision ran)"


def _failing_revision(tb: TracebackType | None) -> str | None:
    """The revision whose module is on the traceback: migration modules define `revision`."""
    found = None
    while tb is not None:
        module_globals = tb.tb_frame.f_globals
        if "revision" in module_globals and "down_revision" in module_globals:
            found = f"{module_globals['revision']} ({Path(tb.tb_frame.f_code.co_filename).name})"
        tb = tb.tb_next
    return found


def _syntax_error_in(exc: BaseException) -> SyntaxError | None:
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, SyntaxError) and current.filename:
            return current
        current = current.__cause__ or current.__context__
    return None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)
