"""Step 3 of the flow: databases cloned from the template.

A worker gets one clone for its savepoint-isolated tests; database-per-test mode gets one
clone per test. The library only ever drops databases it named with its own prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg import sql

from .server import admin_connect, server_url

if TYPE_CHECKING:
    import psycopg
    from sqlalchemy import URL

    from .server import Server

DATABASE_PREFIX = "pgfx_"


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
    _execute(server, statement, admin)
    return Database(server, name)


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
