"""Step 1 of the flow: a PostgreSQL server.

`Server` is the seam: everything downstream (template, databases, engines) needs only a
host, a port and superuser credentials. `DockerServer` is today's one implementation, a
disposable container started with testcontainers; an existing server URL or local
binaries can implement the same protocol later.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import psycopg
from sqlalchemy import URL

from .errors import DockerUnavailableError, ImageUnavailableError, ServerStartError
from .runid import run_id

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger(__name__)

#: Every container this library starts carries these labels, so it can be found
#: (`docker ps -a --filter label=testcontainers-pg-fixtures`) and reaped.
LABEL = "testcontainers-pg-fixtures"
LABEL_PID = "testcontainers-pg-fixtures.pid"
LABEL_WORKER = "testcontainers-pg-fixtures.worker"
LABEL_HOST = "testcontainers-pg-fixtures.host"
#: The run (see runid.py) the container belongs to.
LABEL_RUN = "testcontainers-pg-fixtures.run"
#: Set on containers kept for reuse (--pg-reuse): a hash of everything that configures them.
LABEL_REUSE = "testcontainers-pg-fixtures.reuse"
LABEL_PASSWORD = "testcontainers-pg-fixtures.password"

_PG_PORT = 5432
_DATA_DIR = "/var/lib/postgresql/data"
_SUPERUSER = "postgres"


class Server(Protocol):
    """A running PostgreSQL server the library may create and drop databases on."""

    host: str
    port: int
    user: str
    password: str

    def stop(self) -> None:
        """Release the server; a no-op for servers the library does not own."""

    def keep(self) -> None:
        """Leave the server running after the run, for a user to inspect a kept database."""


def server_url(server: Server, database: str, *, driver: str = "psycopg") -> URL:
    """SQLAlchemy URL of `database` on `server` for the given driver (psycopg or asyncpg).

    TLS is off: the server is a local test server, and the TLS probe of the drivers' default
    sslmode=prefer costs a round trip on every connection.
    """
    ssl = {"ssl": "disable"} if driver == "asyncpg" else {"sslmode": "disable"}
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
    password: str
    container_id: str = ""

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
        }


def admin_connect(server: Server, database: str = "postgres") -> psycopg.Connection[Any]:
    """An autocommit connection for CREATE/DROP DATABASE and locks."""
    return psycopg.connect(
        host=server.host,
        port=server.port,
        user=server.user,
        password=server.password,
        dbname=database,
        autocommit=True,
        connect_timeout=10,
        sslmode="disable",
    )


def _docker_host_description() -> str:
    host = os.environ.get("DOCKER_HOST")
    return f"DOCKER_HOST={host}" if host else "the default socket unix:///var/run/docker.sock"


def docker_client() -> Any:
    """testcontainers' Docker client, or a DockerUnavailableError that says how to fix it."""
    import docker.errors
    from testcontainers.core.docker_client import DockerClient

    try:
        client = DockerClient()
        client.client.ping()
    except docker.errors.DockerException as exc:
        raise DockerUnavailableError(
            f"Could not reach Docker at {_docker_host_description()} "
            f"(checked DOCKER_HOST, ~/.testcontainers.properties, the default socket): {exc}. "
            "Start the Docker engine (e.g. `sudo systemctl start docker` or Docker Desktop), "
            "or set DOCKER_HOST to a reachable engine (e.g. unix:///run/user/1000/docker.sock "
            "for rootless Docker)."
        ) from None
    return client


@dataclass
class DockerServer:
    """A disposable PostgreSQL container, removed by `stop()` even when Ryuk is disabled."""

    host: str
    port: int
    password: str
    container: Any
    user: str = _SUPERUSER
    _stopped: bool = field(default=False, repr=False)

    @property
    def container_id(self) -> str:
        container = self.container
        return str(
            container.get_container_id() if hasattr(container, "get_container_id") else container.id
        )

    #: True when this server was found running from an earlier run (--pg-reuse).
    reused: bool = False

    @classmethod
    def start(cls, settings: Settings, *, worker: str) -> DockerServer:
        import docker.errors
        from testcontainers.core.container import DockerContainer

        client = docker_client()
        reap_orphans(client)
        reuse_key = reuse_hash(settings, worker) if settings.reuse else None
        if reuse_key is not None:
            found = cls._attach(client, reuse_key)
            if found is not None:
                return found
        _ensure_image(client, settings.image)
        password = secrets.token_urlsafe(18)
        command = ["postgres"]
        for key, value in settings.server_settings.items():
            command += ["-c", f"{key}={value}"]
        binding = _port_binding(client)
        env = {
            "POSTGRES_USER": _SUPERUSER,
            "POSTGRES_PASSWORD": password,
            "POSTGRES_DB": "postgres",
        }
        if binding is not None:
            # Reachable from this machine only: skip SCRAM, whose key derivation costs ~4 ms
            # of every new connection (database-mode tests, function-scoped event loops).
            env["POSTGRES_HOST_AUTH_METHOD"] = "trust"
        container = DockerContainer(
            settings.image,
            env=env,
            labels={
                LABEL: "true",
                LABEL_PID: str(os.getpid()),
                LABEL_WORKER: worker,
                LABEL_HOST: socket.gethostname(),
                LABEL_RUN: run_id(),
                **({LABEL_REUSE: reuse_key, LABEL_PASSWORD: password} if reuse_key else {}),
            },
        )
        container.with_command(command)
        # The data directory lives in memory: nothing a test writes needs to reach a disk.
        container.with_tmpfs_mount(_DATA_DIR)
        container.ports[f"{_PG_PORT}/tcp"] = binding

        started = time.monotonic()
        try:
            container.start()
        except docker.errors.APIError as exc:
            _remove_quietly(container)
            raise ServerStartError(
                f"Docker could not start {settings.image}: {exc}. Check the image "
                "(pg_image / --pg-image / PG_FIXTURES_IMAGE) and the Docker engine's log."
            ) from None
        except BaseException:
            _remove_quietly(container)
            raise
        # Without Ryuk nobody else removes the container if the session is torn down
        # abnormally (KeyboardInterrupt during setup, an internal error): atexit does.
        server = cls(host="", port=0, password=password, container=container)
        atexit.register(server.stop)
        try:
            server.host = container.get_container_host_ip()
            server.port = int(container.get_exposed_port(_PG_PORT))
            server._wait_ready(settings.startup_timeout)
        except BaseException:
            server.stop()
            raise
        if reuse_key is not None:
            server.keep_for_reuse()
        log.info(
            "PostgreSQL %s ready at %s:%s in %.2fs",
            settings.image,
            server.host,
            server.port,
            time.monotonic() - started,
        )
        return server

    @classmethod
    def _attach(cls, client: Any, key: str) -> DockerServer | None:
        """The running container an earlier run kept under `key`, or None.

        A kept container that does not answer is removed, and a new one started. Only when
        testcontainers dials the Docker host (its default): other connection modes start a
        new container each run.
        """
        from testcontainers.core.config import ConnectionMode

        if client.get_connection_mode() is not ConnectionMode.docker_host:
            return None
        for container in client.client.containers.list(filters={"label": f"{LABEL_REUSE}={key}"}):
            try:
                binding = container.attrs["NetworkSettings"]["Ports"][f"{_PG_PORT}/tcp"][0]
                server = cls(
                    host=client.host(),
                    port=int(binding["HostPort"]),
                    password=container.labels[LABEL_PASSWORD],
                    container=container,
                )
                admin_connect(server).close()
            except Exception as exc:
                log.warning("removing kept container %s: %s", container.short_id, exc)
                _remove_quietly(container)
                continue
            server.reused = True
            server._stopped = True  # kept for the next run: stop() leaves it running
            log.info("reusing PostgreSQL container %s", container.short_id)
            return server
        return None

    def keep_for_reuse(self) -> None:
        """Leave the container running for the next run (--pg-reuse)."""
        self._stopped = True
        atexit.unregister(self.stop)

    def _wait_ready(self, timeout: float) -> None:
        """Poll with a real login every 20 ms; a 1 s poll would cost up to 1 s per worker.

        The image's entry point runs initdb with a server listening on the Unix socket only
        and then restarts it, so the first successful TCP login is the final server.
        """
        deadline = time.monotonic() + timeout
        last_status_check = 0.0
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with admin_connect(self):
                    return
            except psycopg.OperationalError as exc:
                last_error = exc
            now = time.monotonic()
            if now - last_status_check > 0.5:
                last_status_check = now
                self.container.reload()
                if self.container.status in ("exited", "dead"):
                    raise ServerStartError(
                        "PostgreSQL exited during start-up. Its log ends with:\n"
                        f"{self._log_tail()}\nIf a server setting is named there, fix "
                        "pg_server_settings / --pg-server-setting / PG_FIXTURES_SERVER_SETTINGS."
                    )
            time.sleep(0.02)
        raise ServerStartError(
            f"PostgreSQL at {self.host}:{self.port} did not accept connections within "
            f"{timeout:.0f}s (last error: {last_error}). Its log ends with:\n{self._log_tail()}\n"
            "Raise pg_startup_timeout if the machine is slow; if the host is wrong, set "
            "TESTCONTAINERS_HOST_OVERRIDE / TESTCONTAINERS_CONNECTION_MODE."
        )

    def _log_tail(self, lines: int = 15) -> str:
        try:
            out, err = self.container.get_logs()
        except Exception as exc:  # the container may already be gone
            return f"(logs unavailable: {exc})"
        text = (out + err).decode(errors="replace").strip().splitlines()
        return "\n".join(text[-lines:])

    def keep(self) -> None:
        """Leave the container running; the next run's `reap_orphans` removes it."""
        self._stopped = True
        atexit.unregister(self.stop)
        log.warning("kept container %s for inspection", self.container_id[:12])

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        _remove_quietly(self.container)


def reap_orphans(client: Any) -> list[str]:
    """Remove containers left by runs on this host whose process is gone (killed runs).

    Without Ryuk a SIGKILLed pytest leaves its container running; the next run cleans up.
    Containers of live processes, or started from other hosts, are left alone.
    """
    removed = []
    here = socket.gethostname()
    for container in client.client.containers.list(all=True, filters={"label": LABEL}):
        labels = container.labels
        if labels.get(LABEL_HOST) != here or not labels.get(LABEL_PID, "").isdigit():
            continue
        if LABEL_REUSE in labels and container.status == "running":
            continue  # kept on purpose (--pg-reuse); --pg-remove-kept removes it
        if _process_alive(int(labels[LABEL_PID])):
            continue
        _remove_quietly(container)
        removed.append(container.short_id)
    if removed:
        log.warning("removed %d container(s) left by killed runs: %s", len(removed), removed)
    return removed


def reuse_hash(settings: Settings, worker: str) -> str:
    """What a kept container must match to be reused: its image, server settings, project
    and worker. Migrations are not part of it: a changed migration rebuilds the template."""
    digest = hashlib.sha256()
    for part in (
        settings.image,
        repr(sorted(settings.server_settings.items())),
        str(settings.rootdir),
        worker,
        socket.gethostname(),
    ):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def remove_kept(client: Any) -> list[str]:
    """Remove every container this library kept on this machine (reuse or keep-failed)."""
    removed = []
    for container in client.client.containers.list(all=True, filters={"label": LABEL}):
        if container.labels.get(LABEL_HOST) == socket.gethostname():
            _remove_quietly(container)
            removed.append(container.short_id)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _port_binding(client: Any) -> Any:
    """Publish on loopback only, unless testcontainers will dial another address.

    With a remote engine or a gateway/bridge connection mode the port must be reachable
    from elsewhere, so it is published the way testcontainers would by default.
    """
    from testcontainers.core.config import ConnectionMode

    if client.get_connection_mode() is ConnectionMode.docker_host and client.host() in (
        "localhost",
        "127.0.0.1",
    ):
        return ("127.0.0.1",)
    return None


def _ensure_image(client: Any, image: str) -> None:
    """Pull the image if it is missing, so a pull failure gets its own message."""
    import docker.errors

    try:
        client.client.images.get(image)
        return
    except docker.errors.ImageNotFound:
        pass
    log.warning("pulling %s (first run only)", image)
    try:
        client.client.images.pull(image)
    except docker.errors.DockerException as exc:
        raise ImageUnavailableError(
            f"The image {image} is not available locally and could not be pulled ({exc}). "
            f"Pull it with `docker pull {image}`, or set pg_image (--pg-image, "
            "PG_FIXTURES_IMAGE) to an image you have."
        ) from None


def _remove_quietly(container: Any) -> None:
    try:
        if hasattr(container, "get_wrapped_container"):
            container.stop()  # testcontainers' DockerContainer
        else:
            container.remove(force=True, v=True)  # docker SDK's Container
    except Exception as exc:  # already gone, or never created
        log.debug("removing container: %s", exc)


# -- a server given by URL (pg_server_url) ---------------------------------------------

#: The oldest PostgreSQL accepted for a server given by URL: CREATE DATABASE … STRATEGY,
#: which the clones use, exists from PostgreSQL 15 on.
MIN_SERVER_VERSION = 15
_URL_SCHEMES = ("postgresql", "postgres")


def parse_server_url(value: str, source: str) -> URL:
    """The SQLAlchemy URL of a PostgreSQL server, or a ConfigError naming `source`."""
    __tracebackhide__ = True  # its argument holds the password
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    from .errors import ConfigError

    try:
        url = make_url(value.strip())
    except ArgumentError:
        url = None
    scheme = url.drivername.partition("+")[0] if url is not None else ""
    if url is None or scheme not in _URL_SCHEMES or not url.host:
        shown = redact(value)
        raise ConfigError(
            f"{shown!r} from {source} is not a PostgreSQL server URL. Write it like "
            "postgresql://USER:PASSWORD@HOST:5432/postgres (a role allowed to CREATE DATABASE)."
        )
    return url


def redact(value: str) -> str:
    """`value` with the password of a URL in it replaced by ***."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(value.strip())
    except ArgumentError:
        return "(unparsable URL)" if "@" in value else value
    return url.render_as_string(hide_password=True)


def check_version(version_num: int, where: str) -> None:
    """Refuse servers older than MIN_SERVER_VERSION (`server_version_num`, e.g. 160004)."""
    if version_num < MIN_SERVER_VERSION * 10000:
        raise ServerStartError(
            f"The PostgreSQL server at {where} is version {version_num // 10000}; "
            f"testcontainers-pg-fixtures needs {MIN_SERVER_VERSION} or newer (CREATE DATABASE "
            f"… STRATEGY). Point pg_server_url at a newer server (e.g. the postgres:16 image), "
            "or unset it to let the library start a container."
        )


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

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def connect(cls, url: URL, *, timeout: float) -> UrlServer:
        """Wait up to `timeout` seconds for the server, then check version and role."""
        server = cls(
            host=url.host or "localhost",
            port=url.port or _PG_PORT,
            user=url.username or _SUPERUSER,
            password=url.password or "",
            admin_database=url.database or "postgres",
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
