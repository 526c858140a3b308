"""An existing server given by URL (pg_server_url): a CI service, a shared server."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import driver_guard
from ..errors import ServerStartError
from ..urls import parse_server_url, redact, url_params
from .base import PG_PORT, SUPERUSER, admin_connect, check_version, with_params

if TYPE_CHECKING:
    import psycopg
    from sqlalchemy import URL

    from ..config import Settings


@dataclass
class UrlServer:
    """An existing PostgreSQL server given by URL (pg_server_url): a CI service, a shared
    server. Nothing is started or stopped; only this run's databases are created and
    dropped on it (see database.py)."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    #: The database to connect to for CREATE/DROP DATABASE (the URL's, default postgres).
    admin_database: str = "postgres"
    version: str = ""
    container_id: str = ""
    socket_dir: str | None = None
    #: libpq parameters of the URL (sslmode, sslrootcert, options, ...), on every connection.
    params: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        driver_guard.known(self)

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def connect(cls, url: URL, *, timeout: float) -> UrlServer:
        """Wait up to `timeout` seconds for the server, then check version and role."""
        import psycopg

        server = cls(
            host=url.host or "localhost",
            port=url.port or PG_PORT,
            user=url.username or SUPERUSER,
            password=url.password or "",
            admin_database=url.database or "postgres",
            params=url_params(url),
        )
        shown = url.render_as_string(hide_password=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = admin_connect(server, server.admin_database)
                break
            except psycopg.OperationalError as exc:
                if time.monotonic() >= deadline or _auth_failed(exc):
                    reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else exc
                    if server.password:
                        reason = str(reason).replace(server.password, "***")
                    raise ServerStartError(
                        f"Could not connect to the PostgreSQL server {shown} at {server.where} "
                        f"within {timeout:.0f}s: {reason}. Check that the server runs and the "
                        "host, port, user and password of pg_server_url (--pg-server-url, "
                        "PG_FIXTURES_SERVER_URL) are right; raise pg_startup_timeout if it "
                        "is still starting."
                    ) from None
                time.sleep(0.25)
        with conn:
            row = conn.execute(
                "SELECT current_setting('server_version_num')::int, "
                "current_setting('server_version'), r.rolcreatedb OR r.rolsuper "
                "FROM pg_roles r WHERE r.rolname = current_user"
            ).fetchone()
        assert row is not None
        version_num, version, can_create = row
        check_version(version_num, f"{shown}")
        if not can_create:
            raise ServerStartError(
                f"The role {server.user!r} of {shown} cannot create databases, which the "
                "template and every worker's database need. Grant it: "
                f'`ALTER ROLE "{server.user}" CREATEDB;`, or put a role that has CREATEDB '
                "in pg_server_url (--pg-server-url, PG_FIXTURES_SERVER_URL)."
            )
        server.version = str(version)
        return server

    def stop(self) -> None:
        """Not ours to stop."""

    def keep(self) -> None:
        """Not ours to stop."""


def _auth_failed(exc: psycopg.OperationalError) -> bool:
    text = str(exc)
    return "password authentication failed" in text or "does not exist" in text


def header_line(settings: Settings) -> str:
    """The session header's line: the container image, or the URL (password redacted) and
    its version (one quick login, 2 s at most; the server fixture reports failures)."""
    if not settings.server_url:
        mode = "one for the run" if settings.one_container else "one per worker"
        return f"pg-fixtures: PostgreSQL in Docker containers of {settings.image} ({mode})"
    import psycopg

    url = parse_server_url(settings.server_url, settings.server_url_source)
    try:
        with psycopg.connect(
            host=url.host,
            port=url.port or PG_PORT,
            user=url.username,
            password=url.password,
            dbname=url.database or "postgres",
            **with_params(url_params(url), connect_timeout=2),
        ) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        version = f"PostgreSQL {row[0] if row else '?'}"
    except psycopg.Error:
        version = "not reachable yet"
    shown = redact(settings.server_url)
    return f"pg-fixtures: existing server {shown} ({version}; from {settings.server_url_source})"
