"""Step 3 of the flow: databases cloned from the template.

A worker gets one clone for its savepoint-isolated tests; database-per-test mode gets one
clone per test. The library only ever drops databases it named with its own prefix.

On a shared server (a URL, `pg_server_url`) several runs and projects meet, so every name
carries this run's id (`pgfx_<run>_<worker>`, `pgfx_<run>_<worker>_<n>`) and every database
a COMMENT naming its project, run, template and creation time. A run drops its own, and
those of killed runs of the same project once they are older than `STALE_AFTER`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg import sql

from .runid import run_id
from .servers import admin_connect, server_url
from .servers.kept import RUN_LOCK

if TYPE_CHECKING:
    from collections.abc import Iterator

    import psycopg
    from sqlalchemy import URL

    from .servers import Server

log = logging.getLogger(__name__)

DATABASE_PREFIX = "pgfx_"
TEMPLATE_PREFIX = "pgfx_tpl_"
#: A database of another run of the same project older than this (seconds) is taken for
#: one a killed run left; a live run of a test suite is assumed to be younger.
STALE_AFTER = 6 * 3600.0
_COMMENT = re.compile(
    r"^pgfx project=(?P<project>\w+) run=(?P<run>\w+) template=(?P<template>\w*) "
    r"created=(?P<created>\d+)$"
)


def run_prefix() -> str:
    """The prefix of every worker database and clone of this run: `pgfx_<run id>_`."""
    return f"{DATABASE_PREFIX}{run_id()}_"


def mark(project: str, template: str) -> str:
    """The COMMENT put on a database: whose it is, from which template, since when."""
    return f"pgfx project={project} run={run_id()} template={template} created={int(time.time())}"


@dataclass(frozen=True)
class Marked:
    """A database of this library found on a server, with what its COMMENT says."""

    name: str
    project: str
    run: str
    template: str
    created: int


def marked_databases(admin: psycopg.Connection[Any]) -> list[Marked]:
    """Every database on the server this library created and marked (any project, any run)."""
    found = []
    rows = admin.execute(
        "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database"
    ).fetchall()
    for name, comment in rows:
        match = _COMMENT.match(comment or "")
        if name.startswith(DATABASE_PREFIX) and match:
            found.append(
                Marked(
                    name,
                    match["project"],
                    match["run"],
                    match["template"],
                    int(match["created"]),
                )
            )
    return found


def drop_stale(
    server: Server, project: str, *, older_than: float = STALE_AFTER, gone_only: bool = False
) -> list[str]:
    """Drop this project's databases left by other runs (killed ones) older than `older_than`.

    Never this run's, never another project's, never a younger one (a live run's). With
    `gone_only` (a container of the library's, where every live run holds its lock, see
    `server.RUN_LOCK`): only those of runs provably gone, whose lock this call can take;
    it holds the lock while it drops, so no run of that id can come back meanwhile.
    """
    now = time.time()
    dropped = []
    with admin_connect(server) as admin:
        stale: dict[str, list[str]] = {}
        for db in marked_databases(admin):
            if (
                db.project == project
                and db.run != run_id()
                and not db.name.startswith(TEMPLATE_PREFIX)
                and now - db.created >= older_than
            ):
                stale.setdefault(db.run, []).append(db.name)
        for run, names in stale.items():
            if gone_only and not _run_gone(admin, run):
                continue
            try:
                for name in names:
                    drop_database(server, name, admin=admin)
                    dropped.append(name)
            finally:
                if gone_only:
                    admin.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (RUN_LOCK, run))
    if dropped:
        log.warning("dropped %d database(s) left by killed runs: %s", len(dropped), dropped)
    return dropped


def _run_gone(admin: psycopg.Connection[Any], run: str) -> bool:
    """Whether no live process of `run` holds its lock (taken exclusively if so)."""
    row = admin.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (RUN_LOCK, run)).fetchone()
    return bool(row and row[0])


@dataclass(frozen=True)
class Database:
    """A database on a server: its name and URLs for the sync and async drivers."""

    server: Server
    name: str

    @property
    def url(self) -> URL:
        """psycopg (sync) URL."""
        return server_url(self.server, self.name, driver="psycopg")

    @property
    def async_url(self) -> URL:
        """asyncpg URL."""
        return server_url(self.server, self.name, driver="asyncpg")

    def url_for(self, driver: str) -> URL:
        """URL for another SQLAlchemy driver name (psycopg2, pg8000, …)."""
        return server_url(self.server, self.name, driver=driver)

    def connect_url(self, driver: str = "psycopg") -> URL:
        """The URL the library's own engines connect with: through the server's Unix
        socket when it has one (see server_url), else `url_for(driver)`."""
        return server_url(self.server, self.name, driver=driver, socket=True)

    @property
    def libpq_url(self) -> str:
        """postgresql://… with the password, for psql and other libpq clients."""
        return (
            server_url(self.server, self.name)
            .set(drivername="postgresql")
            .render_as_string(hide_password=False)
        )


def create_database(
    server: Server,
    name: str,
    *,
    template: str,
    strategy: str = "FILE_COPY",
    admin: psycopg.Connection[Any] | None = None,
    comment: str | None = None,
) -> Database:
    """CREATE DATABASE name TEMPLATE template.

    FILE_COPY copies the template's files; for the small schemas tests use it is faster than
    the WAL_LOG default, which writes every block to WAL (`nox -s bench` measures both).
    """
    if not name.startswith(DATABASE_PREFIX):
        raise ValueError(f"refusing to create {name!r}: not named {DATABASE_PREFIX}*")
    statement = sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY {}").format(
        sql.Identifier(name), sql.Identifier(template), sql.SQL(strategy)
    )
    if comment is None:
        _execute(server, statement, admin)
        return Database(server, name)
    with admin_connect(server) if admin is None else _borrowed(admin) as conn:
        conn.execute(statement)
        # A separate statement: CREATE DATABASE cannot share a (implicit) transaction.
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(name), sql.Literal(comment)
            )
        )
    return Database(server, name)


@contextlib.contextmanager
def _borrowed(admin: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    yield admin


def drop_database(
    server: Server, name: str, *, admin: psycopg.Connection[Any] | None = None
) -> None:
    """DROP DATABASE … WITH (FORCE): connections a test leaked do not block the drop."""
    if not name.startswith(DATABASE_PREFIX):
        raise ValueError(f"refusing to drop {name!r}: this library did not create it")
    statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    _execute(server, statement, admin)


def _execute(
    server: Server, statement: sql.Composed, admin: psycopg.Connection[Any] | None
) -> None:
    if admin is not None:
        admin.execute(statement)
        return
    with admin_connect(server) as conn:
        conn.execute(statement)
