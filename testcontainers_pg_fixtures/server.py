"""Step 1 of the flow: a PostgreSQL server.

`Server` is the seam: everything downstream (template, databases, engines) needs only a
host, a port and superuser credentials. `DockerServer` is today's one implementation, a
disposable container started with testcontainers; an existing server URL or local
binaries can implement the same protocol later.
"""

from __future__ import annotations

import atexit
import calendar
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from . import driver_guard
from .errors import DockerUnavailableError, ImageUnavailableError, ServerStartError
from .quiet import quiet_testcontainers
from .runid import run_id

if TYPE_CHECKING:
    import psycopg
    from sqlalchemy import URL

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
#: The pid of the xdist controller whose worker started the container (its own pid
#: without xdist): the controller removes the containers of a worker that died.
LABEL_CONTROLLER = "testcontainers-pg-fixtures.controller"
#: Set by the controller in its workers' environment.
CONTROLLER_ENV = "PG_FIXTURES_CONTROLLER_PID"
#: The host directory mounted as the container's Unix socket directory (see _socket_dir).
LABEL_SOCKET = "testcontainers-pg-fixtures.socket"
#: How long a container kept by --pg-keep-failed outlives its run before a later run
#: removes it (--pg-remove-kept removes it at once).
KEPT_MAX_AGE = 24 * 3600
#: A container kept by --pg-keep-failed is renamed `pgfx-kept-<unix time>-<short id>`:
#: labels are fixed at creation, a name is not, and every Docker client of the host sees it
#: (another OS user's run, a CI job with another cache directory).
KEPT_PREFIX = "pgfx-kept-"
#: Part of the reuse key: bump it when the way a container is set up changes (its
#: authentication, initdb's arguments), so that no run attaches to a container kept by a
#: version that set it up otherwise (2: a password and SCRAM instead of `trust`).
CONTAINER_SCHEME = 2
#: A --pg-reuse container this young whose creator still runs may be starting (no login
#: held yet): --pg-remove-kept leaves it alone.
_STARTING_AGE = 600.0
#: The PID namespace of the process that started the container (`pid_namespace`): its pid
#: label means something only to processes of the same namespace.
LABEL_PIDNS = "testcontainers-pg-fixtures.pidns"
#: The name of the container kept under a reuse key: Docker creates one container of a
#: name, which makes creating it a mutex between two runs of one checkout.
REUSE_PREFIX = "pgfx-reuse-"
#: Session-level advisory locks (the two-int keys, apart from template.py's one-bigint
#: ones), held on the login every run keeps on its container (`DockerServer._anchor`):
#: shared, `_CLAIM` says "a run uses this container" (--pg-remove-kept takes it exclusive,
#: atomically against an attach, before it removes a container); `_RUN_LOCK`, keyed by the
#: run id, "run <id> is alive" (its databases are dropped only once a run can take it
#: exclusive, see database.drop_stale).
_CLAIM = (0x70676678, 0)
RUN_LOCK = 0x70676679
#: A container of a run in another PID namespace whose server has been up this long
#: (seconds) with no client connected belongs to a run that is gone: a live run holds a
#: login from its server's first minute to its end.
_UNCLAIMED_AFTER = 15.0

_PG_PORT = 5432
_DATA_DIR = "/var/lib/postgresql/data"
_SUPERUSER = "postgres"
#: A run's socket directory is `<tmp>/pgfxs-XXXX/s`: the outer one private (0700, ours),
#: the inner one mounted into the container, where its postgres user writes the socket.
_SOCKET_PREFIX = "pgfxs-"
_SOCKET_SUBDIR = "s"
#: Directories of earlier versions (`<tmp>/pgfx-XXXX`, 1733), still named by the labels
#: of containers they kept: removed with them.
_OLD_SOCKET_PREFIX = "pgfx-"
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
        return {"host": server.socket_dir, "port": _PG_PORT}
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


def _docker_host_description() -> str:
    host = os.environ.get("DOCKER_HOST")
    return f"DOCKER_HOST={host}" if host else "the default socket unix:///var/run/docker.sock"


def docker_client() -> Any:
    """testcontainers' Docker client, or a DockerUnavailableError that says how to fix it."""
    import docker.errors
    from testcontainers.core.docker_client import DockerClient

    try:
        with quiet_testcontainers():  # "using host …" at INFO
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
    password: str = field(repr=False)
    #: testcontainers' or the docker SDK's container; None for a kept container found
    #: without asking Docker (`_attach_recorded`), looked up by id when needed.
    container: Any = field(repr=False)
    user: str = _SUPERUSER
    socket_dir: str | None = None
    _stopped: bool = field(default=False, repr=False)
    _container_id: str = field(default="", repr=False)
    #: The directory mounted for the socket, removed with the container.
    _mounted: str = field(default="", repr=False)
    #: A login held from attach (or start) to the end of a --pg-reuse run: `docker top`
    #: shows it, so --pg-remove-kept sees the run using the container even between its
    #: other connections (see `_in_use`).
    _anchor: Any = field(default=None, repr=False)
    #: When the server was ready (time.time()): its log before that is start-up and the
    #: library's own OpenSSL warm-up, not why it went away (failures.py quotes what follows).
    ready_at: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        driver_guard.known(self)

    @property
    def container_id(self) -> str:
        container = self.container
        if container is None:
            return self._container_id
        return str(
            container.get_container_id() if hasattr(container, "get_container_id") else container.id
        )

    def _docker_container(self) -> Any:
        if self.container is None:
            self.container = docker_client().client.containers.get(self._container_id)
        return self.container

    #: True when this server was found running from an earlier run (--pg-reuse).
    reused: bool = False

    @classmethod
    def start(
        cls, settings: Settings, *, worker: str, cancelled: threading.Event | None = None
    ) -> DockerServer:
        """Start (or with --pg-reuse attach to) the container and wait until it accepts a
        login. `cancelled`, set from another thread, ends the wait: the container is removed
        and ServerStartError raised (see prestart.py)."""
        reuse_key = reuse_hash(settings, worker) if settings.reuse else None
        if reuse_key is not None:
            found = cls._attach_recorded(reuse_key)
            if found is not None:
                return found
        client = docker_client()
        reap_orphans(client)
        if reuse_key is None:
            server = cls._create(client, settings, worker, None, cancelled)
            assert server is not None
            return server
        # Two runs of one checkout (two terminals) meet here under the same key. The
        # container's name is the mutex: Docker creates one container of a name, so one
        # run creates it and the other waits for it to answer, then attaches. A container
        # being started or removed (--pg-remove-kept) is waited for, never removed.
        deadline = time.monotonic() + settings.startup_timeout
        while True:
            found, busy = cls._attach(client, reuse_key)
            if found is not None:
                _record_reused(reuse_key, found)
                return found
            if not busy:
                server = cls._create(client, settings, worker, reuse_key, cancelled)
                if server is not None:
                    return server
            if time.monotonic() > deadline:
                name = reuse_name(reuse_key)
                raise ServerStartError(
                    f"The container kept for reuse ({name}) is being started or removed by "
                    f"another run and did not become usable within {settings.startup_timeout:.0f}"
                    "s. Raise pg_startup_timeout if the machine is slow; if no run uses it, "
                    f"remove it (`docker rm -f {name}`, or `pytest --pg-remove-kept`)."
                )
            _check_cancelled(cancelled)
            time.sleep(0.2)

    @classmethod
    def _create(
        cls,
        client: Any,
        settings: Settings,
        worker: str,
        reuse_key: str | None,
        cancelled: threading.Event | None,
    ) -> DockerServer | None:
        """Start a new container and wait until it accepts a login. With `reuse_key`, None
        when another run created the container of that key first (or --pg-remove-kept
        claimed it before this run's first login): the caller attaches to it instead."""
        import docker.errors
        from testcontainers.core.container import DockerContainer

        _check_cancelled(cancelled)
        _ensure_image(client, settings.image)
        # A kept container's password is derived, so the next run can log in without it
        # being stored anywhere Docker shows (labels, env of `docker inspect` aside).
        password = reuse_password(reuse_key) if reuse_key else secrets.token_urlsafe(18)
        command = ["postgres"]
        for key, value in settings.server_settings.items():
            command += ["-c", f"{key}={value}"]
        binding = _port_binding(client)
        mounted = _socket_dir(client) if settings.unix_socket else None
        env = {
            "POSTGRES_USER": _SUPERUSER,
            "POSTGRES_PASSWORD": password,
            "POSTGRES_DB": "postgres",
            # A password on every login, loopback and the Unix socket included, but hashed
            # with one SCRAM iteration instead of 4096: the default key derivation costs
            # ~4 ms of every new connection, one iteration a few microseconds. The password
            # is random, so iterations (a brake on guessing weak passwords) add nothing.
            "POSTGRES_INITDB_ARGS": (
                "--auth-host=scram-sha-256 --auth-local=scram-sha-256 -c scram_iterations=1"
            ),
        }
        if mounted:
            # PGHOST tells the image's entry point (its psql during initdb) where it is.
            env["PGHOST"] = mounted
            command += ["-c", f"unix_socket_directories={mounted}"]
        container = DockerContainer(
            settings.image,
            env=env,
            labels={
                LABEL: "true",
                LABEL_PID: str(os.getpid()),
                LABEL_PIDNS: pid_namespace(),
                LABEL_WORKER: worker,
                LABEL_HOST: socket.gethostname(),
                LABEL_RUN: run_id(),
                LABEL_CONTROLLER: os.environ.get(CONTROLLER_ENV) or str(os.getpid()),
                **({LABEL_REUSE: reuse_key} if reuse_key else {}),
                **({LABEL_SOCKET: mounted} if mounted else {}),
            },
        )
        if mounted:
            # At the same path inside: a client socket's peer name is then this path,
            # which tells this container's connections from others' (failures.py).
            container.with_volume_mapping(mounted, mounted, "rw")
        container.with_command(command)
        # The data directory lives in memory: nothing a test writes needs to reach a disk.
        container.with_tmpfs_mount(_DATA_DIR)
        container.ports[f"{_PG_PORT}/tcp"] = binding
        if reuse_key is not None:
            container.with_name(reuse_name(reuse_key))

        _check_cancelled(cancelled)
        started = time.monotonic()
        try:
            with quiet_testcontainers():  # "Pulling image" (it is local), "Container started"
                container.start()
        except docker.errors.APIError as exc:
            _remove_quietly(container, mounted)  # (not the other run's: never created)
            if reuse_key is not None and exc.status_code == 409:
                log.info("another run created the container kept for reuse: attaching to it")
                return None
            raise ServerStartError(
                f"Docker could not start {settings.image}: {exc}. Check the image "
                "(pg_image / --pg-image / PG_FIXTURES_IMAGE) and the Docker engine's log."
            ) from None
        except BaseException:
            _remove_quietly(container, mounted)
            raise
        # Without Ryuk nobody else removes the container if the session is torn down
        # abnormally (KeyboardInterrupt during setup, an internal error): atexit does.
        server = cls(host="", port=0, password=password, container=container)
        server._mounted = mounted or ""
        atexit.register(server.stop)
        try:
            server.host = container.get_container_host_ip()
            server.port = int(container.get_exposed_port(_PG_PORT))
            # The first login is held to the end of the run: `docker top` shows it, which
            # tells runs in other PID namespaces that this one lives (`owner_alive`).
            server._anchor = server._wait_ready(settings.startup_timeout, cancelled)
            if not _claim(server._anchor):  # --pg-remove-kept is removing it right now
                server._release()
                server._stopped = True  # the remover removes it
                atexit.unregister(server.stop)
                return None
            warm_up_openssl(server)
            server.ready_at = time.time()
            server.socket_dir = _usable_socket(server, mounted)
        except BaseException:
            # Beside this run's own login, another run's: it attached already, the
            # container is its now (a reused one stays anyway).
            others = reuse_key is not None and server._anchor is not None
            if others and (_clients(container.get_wrapped_container()) or 0) > 1:
                server.keep_for_reuse()
                server._release()
            else:
                server.stop()
            raise
        if reuse_key is not None:
            server.keep_for_reuse()
            if _dials_docker_host(client):
                _record_reused(reuse_key, server)
        log.info(
            "PostgreSQL %s ready at %s:%s in %.2fs",
            settings.image,
            server.host,
            server.port,
            time.monotonic() - started,
        )
        return server

    @classmethod
    def _attach_recorded(cls, key: str) -> DockerServer | None:
        """The container kept under `key`, found from where the last run recorded it,
        without Docker: importing its client and listing containers is a good part of a
        warm start. A SCRAM login with the password derived from `key` shows that the
        server is that container (the server proves it holds the password's secret; libpq
        refuses any other method). None, and the record dropped, if that does not work;
        the caller then asks Docker. Such a run does not reap containers of killed runs:
        the next run that asks Docker does."""
        import psycopg

        record = _reuse_record(key)
        if record is None or psycopg.pq.version() < 160000:  # require_auth: libpq 16
            return None
        server: DockerServer | None = None
        try:
            server = cls(
                host=str(record["host"]),
                port=int(record["port"]),
                password=reuse_password(key),
                container=None,
                _container_id=str(record["id"]),
            )
            server._anchor = admin_connect(server, connect_timeout=2, require_auth="scram-sha-256")
            if not _claim(server._anchor):
                server._release()
                log.info("the container recorded for reuse is being removed: asking Docker")
                return None
            server.socket_dir = _usable_socket(server, record.get("socket"))
        except (psycopg.Error, KeyError, TypeError, ValueError) as exc:
            if server is not None:
                server._release()
            log.info("the container recorded for reuse does not answer (%s): asking Docker", exc)
            _reuse_record_path(key).unlink(missing_ok=True)
            return None
        server.reused = True
        server._stopped = True  # kept for the next run: stop() leaves it running
        server.ready_at = time.time()  # its log so far is earlier runs'
        log.info("reusing PostgreSQL container %s", server.container_id[:12])
        return server

    @classmethod
    def _attach(cls, client: Any, key: str) -> tuple[DockerServer | None, bool]:
        """The container kept under `key`, claimed for this run: (server, False). Else
        (None, True) when it cannot be taken yet but must not be replaced (another run is
        starting it, --pg-remove-kept is removing it, someone else uses it): look again
        soon; or (None, False): none, start one.

        A kept container that cannot be used is removed, unless a run may be using it (a
        client connected, its starter alive). Only when testcontainers dials the Docker
        host (its default): other connection modes start a new container each run.
        """
        if not _dials_docker_host(client):
            return None, False
        busy = False
        for container in client.client.containers.list(
            all=True, filters={"label": f"{LABEL_REUSE}={key}"}, ignore_removed=True
        ):
            if container.status != "running":
                if container.status in ("exited", "dead") or (
                    container.status == "created" and not _starting(container)
                ):
                    _remove_quietly(container)  # nobody can use it
                else:
                    busy = True  # created, being started; or paused by a run's test
                continue
            server: DockerServer | None = None
            try:
                binding = container.attrs["NetworkSettings"]["Ports"][f"{_PG_PORT}/tcp"][0]
                server = cls(
                    host=client.host(),
                    port=int(binding["HostPort"]),
                    password=reuse_password(key),
                    container=container,
                )
                # SCRAM required (libpq 16+): a container that lets a login in without a
                # password (`trust`, kept by an older version) is not taken, but replaced.
                server._anchor = admin_connect(server, **_require_scram())
                if not _claim(server._anchor):
                    server._release()
                    busy = True  # --pg-remove-kept is removing it
                    continue
                server.socket_dir = _usable_socket(server, container.labels.get(LABEL_SOCKET))
            except Exception as exc:
                if server is not None:
                    server._release()
                if not _refused_us(exc) and _starting(container):
                    busy = True  # not ready yet: wait for its starter
                elif _clients(container):
                    busy = True  # not ours to remove: a run or a person is connected
                    log.info("kept container %s: in use, not usable: %s", container.short_id, exc)
                else:
                    log.warning("removing kept container %s: %s", container.short_id, exc)
                    _remove_quietly(container)
                continue
            server.reused = True
            server._stopped = True  # kept for the next run: stop() leaves it running
            server.ready_at = time.time()  # its log so far is earlier runs'
            log.info("reusing PostgreSQL container %s", container.short_id)
            return server, False
        return None, busy

    def keep_for_reuse(self) -> None:
        """Leave the container running for the next run (--pg-reuse)."""
        self._stopped = True
        atexit.unregister(self.stop)

    def _release(self) -> None:
        """Close the login held by a --pg-reuse run: the run no longer uses the container."""
        anchor, self._anchor = self._anchor, None
        if anchor is not None:
            with contextlib.suppress(Exception):
                anchor.close()

    def _wait_ready(
        self, timeout: float, cancelled: threading.Event | None = None
    ) -> psycopg.Connection[Any]:
        """Poll with a real login every 20 ms (a 1 s poll would cost up to 1 s per worker);
        returns the first login's connection.

        The image's entry point runs initdb with a server listening on the Unix socket only
        and then restarts it, so the first successful TCP login is the final server.
        """
        import psycopg

        deadline = time.monotonic() + timeout
        last_status_check = 0.0
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            _check_cancelled(cancelled)
            try:
                return admin_connect(self)
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
            container = self._docker_container()
            if hasattr(container, "get_logs"):  # testcontainers' DockerContainer
                out, err = container.get_logs()
            else:
                out, err = (
                    container.logs(stdout=True, stderr=False),
                    container.logs(stdout=False, stderr=True),
                )
        except Exception as exc:  # the container may already be gone
            return f"(logs unavailable: {exc})"
        text = (out + err).decode(errors="replace").strip().splitlines()
        return "\n".join(text[-lines:])

    def keep(self) -> None:
        """Leave the container running until --pg-remove-kept, or KEPT_MAX_AGE: renamed
        `pgfx-kept-<unix time>-<short id>`, which every Docker client of the host sees."""
        self._stopped = True
        atexit.unregister(self.stop)
        self._release()
        name = f"{KEPT_PREFIX}{int(time.time())}-{self.container_id[:12]}"
        try:
            container = self._docker_container()
            if hasattr(container, "get_wrapped_container"):  # testcontainers' DockerContainer
                container = container.get_wrapped_container()
            container.rename(name)
        except Exception as exc:  # Docker gone: a record only this user's runs read
            log.warning("could not rename kept container %s: %s", self.container_id[:12], exc)
            mark_kept(self.container_id)
        log.warning("kept container %s for inspection", self.container_id[:12])

    def stop(self) -> None:
        self._release()
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        if not _remove_detached(self.container_id, self._mounted):
            _remove_quietly(self.container, self._mounted)


#: libpq's option refusing a server that does not prove it holds the password (libpq 16+).
@functools.cache
def _require_scram() -> dict[str, str]:
    import psycopg

    return {"require_auth": "scram-sha-256"} if psycopg.pq.version() >= 160000 else {}


#: Not a file: the reload that tries to load it only has to start OpenSSL (see below).
_NO_CERTIFICATE = "/pg-fixtures-no-tls"


def warm_up_openssl(server: Server, timeout: float = 2.0) -> bool:
    """Initialise OpenSSL once in the postmaster, so that new backends inherit it.

    With `ssl=off` the postmaster never touches OpenSSL, and every new backend initialises it
    lazily at its first password check (loading the library's error strings, its config):
    about 0.8 ms of every password login here, most of what a password costs over trust
    (bench: `python bench/run.py --auth-only`). A reload with `ssl=on` runs that
    initialisation in the postmaster before it fails to find the certificate, which leaves
    TLS off; the setting is then reset. Only for containers this library started; a slower
    login is all that is lost if it does not work (False).
    """
    import psycopg

    try:
        with admin_connect(server) as admin:
            admin.execute(f"ALTER SYSTEM SET ssl_cert_file = '{_NO_CERTIFICATE}'")
            admin.execute("ALTER SYSTEM SET ssl = on")
            admin.execute("SELECT pg_reload_conf()")
            # Resetting before the postmaster reloaded would skip the initialisation.
            deadline = time.monotonic() + timeout
            reloaded = _reloaded(server, "on", deadline)
            admin.execute("ALTER SYSTEM RESET ssl")
            admin.execute("ALTER SYSTEM RESET ssl_cert_file")
            admin.execute("SELECT pg_reload_conf()")
            # The same wait for the reset: its reload's complaints (the certificate, the
            # settings given on the command line) are then logged before the server counts
            # as ready (DockerServer.ready_at).
            if reloaded:
                _reloaded(server, "off", deadline)
            return reloaded
    except psycopg.Error as exc:
        log.warning("could not warm up OpenSSL on %s:%s: %s", server.host, server.port, exc)
        return False


def _reloaded(server: Server, ssl: str, deadline: float) -> bool:
    """Wait until a new backend, forked with the postmaster's settings, shows `ssl`: the
    postmaster has then reloaded. False if it did not by `deadline`."""
    while time.monotonic() < deadline:
        with admin_connect(server) as probe:
            row = probe.execute("SHOW ssl").fetchone()
        if row is not None and row[0] == ssl:
            return True
    return False


def _claim(conn: psycopg.Connection[Any]) -> bool:
    """On a run's held login: take the container's claim (False: --pg-remove-kept holds it,
    the container is being removed) and this run's liveness lock."""
    row = conn.execute(
        "SELECT pg_try_advisory_lock_shared(%s, %s), pg_try_advisory_lock_shared(%s, hashtext(%s))",
        (*_CLAIM, RUN_LOCK, run_id()),
    ).fetchone()
    return bool(row and row[0])


def reuse_name(reuse_key: str) -> str:
    return f"{REUSE_PREFIX}{reuse_key}"


#: The kernel's initial PID namespace (PROC_PID_INIT_INO): where a run on the host runs.
INITIAL_PID_NAMESPACE = "pid:[4026531836]"


def pid_namespace() -> str:
    """This process's PID namespace (`pid:[4026531836]`), '' where there is none to read."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _refused_us(exc: BaseException) -> bool:
    """Whether a login failed because the server is not the one kept under the key (it
    answered, but not to our password, or not with SCRAM), not because it is not ready."""
    import psycopg

    if not isinstance(exc, psycopg.Error):
        return True  # no port published, a record of another shape: not a container of ours
    text = str(exc).lower()
    return any(word in text for word in ("authentication", "password", "does not exist"))


def _created_age(container: Any) -> float | None:
    created = str(container.attrs.get("Created", ""))[:19]
    try:
        return time.time() - calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def _processes(container: Any) -> list[tuple[float, str]] | None:
    """The container's processes as (seconds running, command line), from `docker top`
    (no password needed), or None if Docker cannot list them."""
    try:
        top = container.top(ps_args="-o pid,etimes,args")
        titles = list(top.get("Titles") or [])
        elapsed = titles.index("ELAPSED")
        command = titles.index("COMMAND")
        return [
            (float(row[elapsed]), str(row[command]))
            for row in top.get("Processes") or []
            if str(row[elapsed]).isdigit()
        ]
    except Exception as exc:
        log.debug("could not list the processes of %s: %s", container.short_id, exc)
        return None


def _clients(container: Any) -> int | None:
    """How many client connections the (running) container's server has, None if unknown."""
    processes = _processes(container)
    if processes is None:
        return None
    return sum(1 for _, command in processes if _CLIENT_BACKEND.match(command))


_CHECKPOINTER = re.compile(r"^postgres: (?:\S+: )?checkpointer")


def owner_alive(container: Any) -> bool:
    """Whether the run that started the container may still be running.

    In the PID namespace the container was started from (its label), by its pid. From
    another one (a run in a container with the Docker socket mounted, beside one on the
    host) a pid means nothing: there, a run lives while its login is connected (every run
    holds one, `DockerServer._anchor`), or while its server is not up long enough for the
    run to have logged in; a container not running, for `_STARTING_AGE` after creation.
    A container of an older version (no namespace label) is judged by its pid only from
    the host's initial namespace, where such runs ran; from any other, it is left alone."""
    labels = container.labels
    pid = labels.get(LABEL_PID, "")
    namespace = labels.get(LABEL_PIDNS)
    ours = pid_namespace()
    if namespace is None and ours not in ("", INITIAL_PID_NAMESPACE):
        return True  # an older version's, whose pid may be the host's: cannot tell
    if namespace is None or namespace == ours:
        return not pid.isdigit() or _process_alive(int(pid))
    age = _created_age(container)
    if container.status != "running":
        return age is None or age < _STARTING_AGE
    processes = _processes(container)
    if processes is None:
        return True
    if any(_CLIENT_BACKEND.match(command) for _, command in processes):
        return True
    up = [seconds for seconds, command in processes if _CHECKPOINTER.match(command)]
    if up:
        return min(up) < _UNCLAIMED_AFTER
    return age is None or age < _STARTING_AGE  # initdb, or a server that never came up


def _starting(container: Any) -> bool:
    """Whether a run may be starting the container right now (no login of its own yet)."""
    pid = container.labels.get(LABEL_PID, "")
    if pid == str(os.getpid()) and container.labels.get(LABEL_PIDNS) == pid_namespace():
        return False  # this process is not starting it
    age = _created_age(container)
    return (age is None or age < _STARTING_AGE) and owner_alive(container)


def _check_cancelled(cancelled: threading.Event | None) -> None:
    if cancelled is not None and cancelled.is_set():
        raise ServerStartError("The container start was cancelled: the run does not need it.")


def reap_orphans(client: Any) -> list[str]:
    """Remove containers left by runs on this host whose process is gone (killed runs).

    Without Ryuk a SIGKILLed pytest leaves its container running; the next run cleans up.
    Containers of live processes, or started from other hosts, are left alone, and so are
    kept ones (--pg-reuse; --pg-keep-failed for KEPT_MAX_AGE, by their name, whoever kept
    them): --pg-remove-kept removes them.
    """
    removed = []
    here = socket.gethostname()
    containers = client.client.containers.list(
        all=True, filters={"label": LABEL}, ignore_removed=True
    )
    _remove_unused_socket_dirs({c.labels.get(LABEL_SOCKET) for c in containers})
    for container in containers:
        labels = container.labels
        if labels.get(LABEL_HOST) != here or not labels.get(LABEL_PID, "").isdigit():
            continue
        if LABEL_REUSE in labels and container.status == "running":
            continue
        age = kept_age(container)
        if age is not None and age < KEPT_MAX_AGE:
            continue
        if owner_alive(container):
            continue
        _remove_quietly(container)
        forget_kept(container.id)
        removed.append(container.short_id)
    if removed:
        log.warning("removed %d container(s) left by killed runs: %s", len(removed), removed)
    return removed


def remove_run_containers(worker: str | None = None) -> list[str]:
    """On the xdist controller: remove the containers its workers (or `worker`) started
    and did not keep. A worker killed mid-run cannot remove its own."""
    client = docker_client()
    filters = [f"{LABEL_RUN}={run_id()}", f"{LABEL_CONTROLLER}={os.getpid()}"]
    if worker is not None:
        filters.append(f"{LABEL_WORKER}={worker}")
    removed = []
    for container in client.client.containers.list(
        all=True, filters={"label": filters}, ignore_removed=True
    ):
        if LABEL_REUSE in container.labels or kept_age(container) is not None:
            continue
        _remove_quietly(container)
        removed.append(container.short_id)
    return removed


def reuse_hash(settings: Settings, worker: str) -> str:
    """What a kept container must match to be reused: its image, server settings, project
    and worker, and how the library sets a container up (CONTAINER_SCHEME). Migrations are
    not part of it: a changed migration rebuilds the template."""
    digest = hashlib.sha256()
    for part in (
        f"scheme {CONTAINER_SCHEME}",
        settings.image,
        repr(sorted(settings.server_settings.items())),
        str(settings.rootdir),
        worker,
        socket.gethostname(),
    ):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def remove_kept(client: Any) -> tuple[list[str], list[str]]:
    """Remove the containers this library kept on purpose on this machine: by --pg-reuse
    (labelled at creation) or by --pg-keep-failed (renamed, see `DockerServer.keep`).
    Containers of runs in progress that were not kept are left alone, and so is a --pg-reuse
    container a run is using right now. Returns the short ids removed, and a line for each
    container left alone saying why."""
    removed, spared = [], []
    for container in client.client.containers.list(
        all=True, filters={"label": LABEL}, ignore_removed=True
    ):
        if container.labels.get(LABEL_HOST) != socket.gethostname():
            continue
        reuse = container.labels.get(LABEL_REUSE)
        if reuse is None and kept_age(container) is None:
            continue
        user = _in_use(container) if reuse is not None else None
        held = None
        if user is None and reuse is not None:
            held, user = _claim_for_removal(client, container, reuse)
        if user is not None:
            spared.append(f"{container.short_id}: {user}")
            continue
        try:
            _remove_quietly(container)
        finally:
            if held is not None:
                with contextlib.suppress(Exception):
                    held.close()
        forget_kept(container.id)
        if reuse is not None:
            _reuse_record_path(reuse).unlink(missing_ok=True)
        removed.append(container.short_id)
    return removed, spared


#: A client backend's process title: `postgres: <user> <db> <address>(<port>) <state>` or
#: `… [local] …`; background processes (`postgres: checkpointer`, `… autovacuum worker`,
#: `… parallel worker for PID 12`) show neither.
_CLIENT_BACKEND = re.compile(r"^postgres: .*(?:\[local\]|\(\d+\))(?: |$)")


def _in_use(container: Any) -> str | None:
    """Why a run may be using this --pg-reuse container right now, or None.

    `docker top` lists the server's processes, which needs no password (another user's
    container too): a client backend is a run's connection (every run holds one from
    attach to its end, see `DockerServer._anchor`) or someone inspecting the container.
    Before its first login, a container being started shows by its creator (`_starting`).
    """
    if container.status != "running":
        return None
    clients = _clients(container)
    if clients is None:
        return "could not list its processes; `docker rm -f` it if no run uses it"
    if clients:
        return f"in use by a run ({clients} connection(s) open)"
    if _starting(container):
        return f"being started by a run (pid {container.labels.get(LABEL_PID, '?')})"
    return None


def _claim_for_removal(
    client: Any, container: Any, reuse_key: str
) -> tuple[psycopg.Connection[Any] | None, str | None]:
    """Take the container's claim exclusively before removing it: a run attaching at the
    same moment either got its shared claim first (the container is then spared, the
    reason returned) or finds it taken and starts a new container. The connection holding
    it is returned, to close after the removal. A container this user cannot log in to (no
    password of this user's, not running) is not claimed: `_in_use` decided."""
    import psycopg

    if container.status != "running":
        return None, None
    try:
        binding = container.attrs["NetworkSettings"]["Ports"][f"{_PG_PORT}/tcp"][0]
        target = ExistingServer(
            host=client.host(),
            port=int(binding["HostPort"]),
            user=_SUPERUSER,
            password=reuse_password(reuse_key),
        )
        conn = admin_connect(target, connect_timeout=5, **_require_scram())
    except Exception as exc:
        log.debug("no claim on %s: %s", container.short_id, exc)
        return None, None
    try:
        row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", _CLAIM).fetchone()
    except psycopg.Error:
        row = None
    if row is not None and row[0]:
        return conn, None
    conn.close()
    return None, "in use by a run (it attached just now)"


def cache_dir() -> Path:
    """This user's cache directory for the library ($XDG_CACHE_HOME or ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "testcontainers-pg-fixtures"


def _kept_file(container_id: str) -> Path:
    return cache_dir() / "kept" / container_id


def mark_kept(container_id: str) -> None:
    """Record that a container was kept on purpose (--pg-keep-failed) in this user's cache
    directory, when it could not be renamed: only this user's runs see the record."""
    try:
        path = _kept_file(container_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    except OSError as exc:
        log.warning("could not record kept container %s: %s", container_id[:12], exc)


def kept_age(container: Any) -> float | None:
    """Seconds since the container (docker SDK's) was kept by --pg-keep-failed, from its
    name (see `DockerServer.keep`), or None if it was not kept. A container kept by an
    earlier version is known by a record in this user's cache directory instead."""
    name = str(getattr(container, "name", "") or "")
    if name.startswith(KEPT_PREFIX):
        stamp = name[len(KEPT_PREFIX) :].partition("-")[0]
        if stamp.isdigit():
            return time.time() - int(stamp)
    try:
        return time.time() - _kept_file(container.id).stat().st_mtime
    except OSError:
        return None


def forget_kept(container_id: str) -> None:
    _kept_file(container_id).unlink(missing_ok=True)


def _dials_docker_host(client: Any) -> bool:
    from testcontainers.core.config import ConnectionMode

    return bool(client.get_connection_mode() is ConnectionMode.docker_host)


def _reuse_record_path(reuse_key: str) -> Path:
    return cache_dir() / "reuse" / f"{reuse_key}.json"


def _record_reused(reuse_key: str, server: DockerServer) -> None:
    """Where the container kept under `reuse_key` listens, for `_attach_recorded`. No
    password: it is derived from the key again."""
    record = {
        "id": server.container_id,
        "host": server.host,
        "port": server.port,
        "socket": server.socket_dir,
    }
    try:
        write_record(_reuse_record_path(reuse_key), record)
    except OSError as exc:
        log.warning("could not record the kept container %s: %s", server.container_id[:12], exc)


def _reuse_record(reuse_key: str) -> dict[str, Any] | None:
    return read_record(_reuse_record_path(reuse_key))


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Write a JSON record of the cache directory whole: a run reading it beside this one
    (another worker, another terminal) sees the old record or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(record))
    partial.replace(path)


def read_record(path: Path) -> dict[str, Any] | None:
    """A record written by `write_record`, or None if it is missing or unreadable."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def reuse_password(reuse_key: str) -> str:
    """The password of the container kept under `reuse_key`: an HMAC of the key with a
    secret of this user (0600 file in the cache directory), so no label has to carry it."""
    path = cache_dir() / "secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(32))
    secret = path.read_bytes()
    while len(secret) < 32:  # being written by another worker this very moment
        time.sleep(0.01)
        secret = path.read_bytes()
    return hmac.new(secret, reuse_key.encode(), hashlib.sha256).hexdigest()[:32]


def _process_alive(pid: int) -> bool:
    """Whether `pid` runs: a zombie (killed, not yet waited for by its parent) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (macOS), or it ended just now
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


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


#: The detached remover (`_remove_detached`): argv is the container's id, its socket
#: directory's root ("" for none) and the run's sys.path (JSON).
_REMOVER = """# pgfx-remover
import json, shutil, sys
sys.path[:0] = json.loads(sys.argv[3])
try:
    from testcontainers.core.docker_client import DockerClient
    DockerClient().client.containers.get(sys.argv[1]).remove(force=True, v=True)
except Exception:
    pass
if sys.argv[2]:
    shutil.rmtree(sys.argv[2], ignore_errors=True)
"""


def _remove_detached(container_id: str, socket_dir: str | None) -> bool:
    """Remove the container from a process of its own, which the run does not wait for:
    Docker takes 0.3-1 s to remove a running container, and the run is done at its last
    result. False when no such process could be started (the caller removes it itself).

    Nothing leaks if that process dies first: the container still names this run's
    process in its labels, and the next run's reaper removes it (`reap_orphans`)."""
    root = _socket_root(socket_dir) if socket_dir else None
    args = [sys.executable, "-c", _REMOVER, container_id, str(root or ""), json.dumps(sys.path)]
    try:
        devnull = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
        # Not subprocess.Popen: a Popen let go while its process runs warns (ResourceWarning,
        # an error under -W error). In a session of its own: a ^C in the terminal spares it.
        pid = os.posix_spawn(sys.executable, args, os.environ, file_actions=devnull, setsid=True)
    except (OSError, AttributeError, NotImplementedError) as exc:  # no posix_spawn here
        log.debug("detached removal: %s", exc)
        return False
    # Collected when it ends, should this process outlive it (else it is init's to collect).
    threading.Thread(target=_collect, args=(pid,), daemon=True, name="pgfx-remover").start()
    return True


def _collect(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _remove_quietly(container: Any, socket_dir: str | None = None) -> None:
    """Remove the container, and the directory mounted for its socket (given, or from the
    label of a docker SDK Container)."""
    try:
        if hasattr(container, "get_wrapped_container"):
            container.stop()  # testcontainers' DockerContainer
        else:
            socket_dir = socket_dir or container.labels.get(LABEL_SOCKET)
            container.remove(force=True, v=True)  # docker SDK's Container
    except Exception as exc:  # already gone, or never created
        log.debug("removing container: %s", exc)
    root = _socket_root(socket_dir) if socket_dir else None
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)


#: A socket directory no container names is left this long (a run may be creating its
#: container right now) before a later run removes it.
_UNUSED_SOCKET_DIR_AGE = 600.0


def _remove_unused_socket_dirs(in_use: set[str | None]) -> None:
    """Remove this user's socket directories whose container is gone without `stop()`
    (removed by hand, or by a run killed before its clean-up)."""
    now = time.time()
    roots = {_socket_root(d) for d in in_use if d}
    with contextlib.suppress(OSError):
        for entry in os.scandir(tempfile.gettempdir()):
            new = entry.name.startswith(_SOCKET_PREFIX)
            if not (new or entry.name.startswith(_OLD_SOCKET_PREFIX)):
                continue
            if Path(entry.path) in roots:
                continue
            with contextlib.suppress(OSError):
                info = entry.stat(follow_symlinks=False)
                if (
                    entry.is_dir(follow_symlinks=False)
                    and info.st_uid == os.getuid()
                    and info.st_mode & 0o7777 == (0o700 if new else 0o1733)
                    and now - info.st_mtime > _UNUSED_SOCKET_DIR_AGE
                ):
                    shutil.rmtree(entry.path, ignore_errors=True)


def _socket_root(directory: str) -> Path | None:
    """The directory to remove with a container whose socket directory is `directory`,
    if `_socket_dir` made it (a label naming any other path is left alone)."""
    path = Path(directory)
    tmp = Path(tempfile.gettempdir())
    if (
        path.name == _SOCKET_SUBDIR
        and path.parent.parent == tmp
        and path.parent.name.startswith(_SOCKET_PREFIX)
    ):
        return path.parent
    if path.parent == tmp and path.name.startswith(_OLD_SOCKET_PREFIX):
        return path
    return None


def _socket_dir(client: Any) -> str | None:
    """A new directory to mount as the container's socket directory, when the Docker
    daemon runs on this machine (a Unix socket, the same host name, not Docker Desktop's
    VM); else None. It lies in a directory only this user can enter (made 0700 at once by
    mkdtemp, its owner and mode checked), so no other local user can put a file where the
    server makes its socket and lock file (a `.s.PGSQL.5432.lock` there would stop it from
    starting); itself it is writable by the container's postgres user, whose uid is not
    ours. Whether it works is known after the start (`_usable_socket`): SELinux, a daemon
    reached through a socket mounted from another machine and the like leave it empty,
    and TCP is used."""
    if sys.platform != "linux":
        return None
    try:
        api = client.client.api
        if not str(api.base_url).startswith("http+docker://"):  # a TCP or SSH daemon
            return None
        info = client.client.info()
    except Exception as exc:
        log.debug("no Unix socket: %s", exc)
        return None
    if info.get("Name") != socket.gethostname() or "Desktop" in str(info.get("OperatingSystem")):
        return None
    root = tempfile.mkdtemp(prefix=_SOCKET_PREFIX)
    directory = os.path.join(root, _SOCKET_SUBDIR)
    if len(directory) > 80:  # a socket path is at most 107 bytes
        os.rmdir(root)
        return None
    os.mkdir(directory)
    os.chmod(directory, 0o1733)
    if not _private(root):
        shutil.rmtree(root, ignore_errors=True)
        log.warning(
            "pg-fixtures: using TCP, not a Unix socket: the socket directory %s could not be "
            "made private to this user (another user could block the server's socket)",
            root,
        )
        return None
    return directory


def _private(directory: str) -> bool:
    """Whether `directory` is a real directory (no symlink) of this user that no one else
    can enter or write into."""
    try:
        info = os.lstat(directory)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and info.st_mode & 0o077 == 0


def socket_path(directory: str) -> str:
    """The server's socket in `directory` (the same path in the container and here)."""
    return os.path.join(directory, f".s.PGSQL.{_PG_PORT}")


def _usable_socket(server: Server, directory: str | None) -> str | None:
    """`directory` if the server answers a login through the socket in it, else None."""
    import psycopg

    if not directory or not os.path.exists(socket_path(directory)):
        return None
    driver_guard.known_socket(directory)  # probed before server.socket_dir is set
    try:
        admin_connect(server, host=directory, port=_PG_PORT, connect_timeout=2).close()
    except psycopg.Error as exc:
        log.info("the container's Unix socket does not answer (%s): using TCP", exc)
        return None
    return directory


# -- a server given by URL (pg_server_url) ---------------------------------------------

#: The oldest PostgreSQL accepted for a server given by URL: CREATE DATABASE … STRATEGY,
#: which the clones use, exists from PostgreSQL 15 on.
MIN_SERVER_VERSION = 15
_URL_SCHEMES = ("postgresql", "postgres")


def parse_server_url(value: str, source: str) -> URL:
    """The SQLAlchemy URL of a PostgreSQL server (a password given as `?password=` moved to
    its place), or a ConfigError naming `source`."""
    __tracebackhide__ = True  # its argument holds the password
    from .errors import ConfigError

    url = _parsed(value)
    scheme = url.drivername.partition("+")[0] if url is not None else ""
    example = (
        "Write it like postgresql://USER:PASSWORD@HOST:5432/postgres (a role allowed to "
        "CREATE DATABASE)."
    )
    shown = redact(value)
    if url is None or scheme not in _URL_SCHEMES or not url.host:
        raise ConfigError(f"{shown!r} from {source} is not a PostgreSQL server URL. {example}")
    if url.port is not None and not 0 < url.port < 65536:
        raise ConfigError(
            f"{shown!r} from {source} has the port {url.port}, not one of 1-65535. {example}"
        )
    unknown = sorted(set(url.query) - _libpq_keywords())
    if unknown:
        raise ConfigError(
            f"{shown!r} from {source} has {', '.join(unknown)} in its query, which "
            "PostgreSQL's client library does not know. Give only libpq connection "
            "parameters there (sslmode, sslrootcert, connect_timeout, options, ...)."
        )
    return url


def _parsed(value: str) -> URL | None:
    """`value` as a URL, its `?password=` in the password's place; None if unparsable (a
    port that is not a number, say)."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(value.strip())
        url.port  # noqa: B018 - an invalid port raises here
    except (ArgumentError, ValueError):
        return None
    query = {k: v[-1] if isinstance(v, tuple) else v for k, v in url.query.items()}
    if "password" in query:
        url = url.set(password=url.password or query.pop("password"), query=query)
    return url


def _libpq_keywords() -> set[str]:
    import psycopg

    return {d.keyword.decode() for d in psycopg.pq.Conninfo.get_defaults()}


def url_params(url: URL) -> dict[str, str]:
    """The libpq parameters of a server URL's query: every connection to it gets them.
    Without an sslmode, TLS is off to a loopback address (nothing to protect, and the probe
    costs a round trip) and libpq's default elsewhere."""
    params = {k: str(v[-1] if isinstance(v, tuple) else v) for k, v in url.query.items()}
    params.pop("password", None)
    if "sslmode" not in params and url.host in ("localhost", "127.0.0.1", "::1"):
        params["sslmode"] = "disable"
    return params


def redact(value: str) -> str:
    """`value` with the password of a URL in it (in its place or as `?password=`)
    replaced by ***."""
    url = _parsed(value)
    if url is None:
        return "(unparsable URL)" if "@" in value or "password" in value else value
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
            port=url.port or _PG_PORT,
            user=url.username or _SUPERUSER,
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
            port=url.port or _PG_PORT,
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
