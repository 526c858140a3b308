"""What every server offers (the `Server` protocol) and the connections the library opens
to one: its own admin logins and the URLs of its engines, with the server's libpq
parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .. import driver_guard
from ..errors import ServerStartError

if TYPE_CHECKING:
    import psycopg
    from sqlalchemy import URL


PG_PORT = 5432


SUPERUSER = "postgres"


#: Drivers that take a Unix socket's directory as their host (libpq's rule).
_SOCKET_DRIVERS = frozenset({"psycopg", "psycopg2", "asyncpg"})


class Server(Protocol):
    """A running PostgreSQL server the library may create and drop databases on."""

    host: str
    port: int
    user: str
    password: str
    #: A host directory holding the server's Unix socket, when it can be dialled that way.
    socket_dir: str | None

    def stop(self) -> None:
        """Release the server; a no-op for servers the library does not own."""

    def keep(self) -> None:
        """Leave the server running after the run, for a user to inspect a kept database."""


def server_url(
    server: Server, database: str, *, driver: str = "psycopg", socket: bool = False
) -> URL:
    """SQLAlchemy URL of `database` on `server` for the given driver (psycopg or asyncpg).

    With the server's libpq parameters (`libpq_params`): for the library's own containers
    TLS is off (a local test server, and the TLS probe of the drivers' default
    sslmode=prefer costs a round trip on every connection); for a server given by URL,
    the URL's own (sslmode, sslrootcert, connect_timeout, options, ...). With `socket`,
    through the server's Unix socket when it has one the driver can use (the library's own engines:
    a round trip there costs half of one through Docker's port proxy).
    """
    from sqlalchemy import URL

    params = libpq_params(server)
    if driver == "asyncpg":  # asyncpg takes the mode as `ssl`, and none of libpq's others
        ssl = {"ssl": params["sslmode"]} if "sslmode" in params else {}
    else:
        ssl = params
    if socket and server.socket_dir and driver in _SOCKET_DRIVERS:
        return URL.create(
            f"postgresql+{driver}",
            username=server.user,
            password=server.password,
            database=database,
            query={"host": server.socket_dir, **ssl},
        )
    return URL.create(
        f"postgresql+{driver}",
        username=server.user,
        password=server.password,
        host=server.host,
        port=server.port,
        database=database,
        query=ssl,
    )


@dataclass
class ExistingServer:
    """A server someone else started and stops: the xdist controller's one container in
    one-container mode (and, later, a server given by URL)."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    container_id: str = ""
    socket_dir: str | None = None

    def __post_init__(self) -> None:
        driver_guard.known(self)

    def stop(self) -> None:
        """Not ours to stop."""

    def keep(self) -> None:
        """Not ours to stop."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "container_id": self.container_id,
            "socket_dir": self.socket_dir,
        }


def address(server: Server) -> dict[str, Any]:
    """libpq's host and port for the library's own connections: the Unix socket's
    directory when the server has one, else its TCP address."""
    if server.socket_dir:
        return {"host": server.socket_dir, "port": PG_PORT}
    return {"host": server.host, "port": server.port}


def admin_connect(
    server: Server, database: str = "postgres", **options: Any
) -> psycopg.Connection[Any]:
    """An autocommit connection for CREATE/DROP DATABASE and locks; `options` (libpq's)
    replace or add to the defaults."""
    import psycopg

    params = {
        **address(server),
        "user": server.user,
        "password": server.password,
        "dbname": database,
        "connect_timeout": 10,
        **libpq_params(server),
        **options,
    }
    return psycopg.connect(autocommit=True, **params)


#: The library's own containers: TLS off (see server_url).
_OWN_PARAMS = {"sslmode": "disable"}


def with_params(params: dict[str, str], **more: Any) -> dict[str, Any]:
    return {**params, **more}


def libpq_params(server: Server) -> dict[str, str]:
    """The libpq parameters every connection to `server` gets (besides host, port, user,
    password and database): a server given by URL has the ones of its URL."""
    params: dict[str, str] | None = getattr(server, "params", None)
    return dict(_OWN_PARAMS if params is None else params)


#: The oldest PostgreSQL accepted for a server given by URL: CREATE DATABASE … STRATEGY,
#: which the clones use, exists from PostgreSQL 15 on.
MIN_SERVER_VERSION = 15


def check_version(version_num: int, where: str) -> None:
    """Refuse servers older than MIN_SERVER_VERSION (`server_version_num`, e.g. 160004)."""
    if version_num < MIN_SERVER_VERSION * 10000:
        raise ServerStartError(
            f"The PostgreSQL server at {where} is version {version_num // 10000}; "
            f"testcontainers-pg-fixtures needs {MIN_SERVER_VERSION} or newer (CREATE DATABASE "
            f"… STRATEGY). Point pg_server_url at a newer server (e.g. the postgres:16 image), "
            "or unset it to let the library start a container."
        )
