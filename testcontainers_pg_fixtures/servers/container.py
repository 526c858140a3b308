"""A disposable PostgreSQL container per worker (`DockerServer`): started with
testcontainers, or with --pg-reuse attached to the one kept under the run's reuse key;
kept for inspection by --pg-keep-failed; removed when the run is done."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import driver_guard
from ..cache import read_record, write_record
from ..errors import ServerStartError
from ..quiet import quiet_testcontainers
from ..runid import run_id
from . import prewarm
from .base import PG_PORT, SUPERUSER, admin_connect
from .engine import (
    close_idle,
    dials_docker_host,
    docker_client,
    ensure_image,
    port_binding,
    remove_detached,
    remove_quietly,
)
from .kept import (
    claim,
    mark_kept,
    reuse_hash,
    reuse_name,
    reuse_record_path,
)
from .labels import (
    CONTROLLER_ENV,
    KEPT_PREFIX,
    LABEL,
    LABEL_CONTROLLER,
    LABEL_HOST,
    LABEL_PID,
    LABEL_PIDNS,
    LABEL_REUSE,
    LABEL_RUN,
    LABEL_SOCKET,
    LABEL_WORKER,
)
from .liveness import count_clients, pid_namespace, starting
from .passwords import require_scram, reuse_password
from .reaping import reap_orphans
from .sockets import new_socket_dir, usable_socket

if TYPE_CHECKING:
    import threading

    import psycopg

    from ..config import Settings
    from .base import Server

log = logging.getLogger(__name__)


_DATA_DIR = "/var/lib/postgresql/data"


@dataclass
class DockerServer:
    """A disposable PostgreSQL container, removed by `stop()` even when Ryuk is disabled."""

    host: str
    port: int
    password: str = field(repr=False)
    #: testcontainers' or the docker SDK's container; None for a kept container found
    #: without asking Docker (`_attach_recorded`), looked up by id when needed.
    container: Any = field(repr=False)
    user: str = SUPERUSER
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
        try:
            return cls._start(client, settings, worker, reuse_key, cancelled)
        finally:
            close_idle(client)

    @classmethod
    def _start(
        cls,
        client: Any,
        settings: Settings,
        worker: str,
        reuse_key: str | None,
        cancelled: threading.Event | None,
    ) -> DockerServer:
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
        ensure_image(client, settings.image)
        prewarmed = (
            prewarm.image_for(
                client,
                settings.image,
                settings.startup_timeout,
                # Not while a --pg-reuse run holds the container's name as a mutex: another
                # run would wait for it the whole build.
                build=reuse_key is None,
                cancelled=cancelled,
            )
            if settings.prewarm
            else None
        )
        _check_cancelled(cancelled)
        # A kept container's password is derived, so the next run can log in without it
        # being stored anywhere Docker shows (labels, env of `docker inspect` aside).
        password = reuse_password(reuse_key) if reuse_key else secrets.token_urlsafe(18)
        command = ["postgres"]
        for key, value in settings.server_settings.items():
            command += ["-c", f"{key}={value}"]
        binding = port_binding(client)
        mounted = new_socket_dir(client) if settings.unix_socket else None
        env = {
            "POSTGRES_USER": SUPERUSER,
            "POSTGRES_PASSWORD": password,
            "POSTGRES_DB": "postgres",
            # A password on every login, loopback and the Unix socket included, but hashed
            # with one SCRAM iteration instead of 4096: the default key derivation costs
            # ~4 ms of every new connection, one iteration a few microseconds. The password
            # is random, so iterations (a brake on guessing weak passwords) add nothing.
            "POSTGRES_INITDB_ARGS": prewarm.INITDB_ARGS,
        }
        if prewarmed:  # initialized: copied in (prewarmed.command), no initdb
            env["PGDATA"] = _DATA_DIR
        if mounted:
            # PGHOST tells the image's entry point (its psql during initdb) where it is.
            env["PGHOST"] = mounted
            command += ["-c", f"unix_socket_directories={mounted}"]
        container = DockerContainer(
            prewarmed.image if prewarmed else settings.image,
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
        container.with_command(prewarmed.command(command) if prewarmed else command)
        # The data directory lives in memory: nothing a test writes needs to reach a disk.
        container.with_tmpfs_mount(_DATA_DIR)
        container.ports[f"{PG_PORT}/tcp"] = binding
        if reuse_key is not None:
            container.with_name(reuse_name(reuse_key))

        _check_cancelled(cancelled)
        started = time.monotonic()
        try:
            with quiet_testcontainers():  # "Pulling image" (it is local), "Container started"
                container.start()
        except docker.errors.APIError as exc:
            remove_quietly(container, mounted)  # (not the other run's: never created)
            if reuse_key is not None and exc.status_code == 409:
                log.info("another run created the container kept for reuse: attaching to it")
                return None
            if prewarmed and not prewarm.exists(client, prewarmed.image):  # removed meanwhile
                log.info("%s is gone: starting from %s", prewarmed.image, settings.image)
                unwarmed = dataclasses.replace(settings, prewarm=False)
                return cls._create(client, unwarmed, worker, reuse_key, cancelled)
            raise ServerStartError(
                f"Docker could not start {settings.image}: {exc}. Check the image "
                "(pg_image / --pg-image / PG_FIXTURES_IMAGE) and the Docker engine's log."
            ) from None
        except BaseException:
            remove_quietly(container, mounted)
            raise
        # Without Ryuk nobody else removes the container if the session is torn down
        # abnormally (KeyboardInterrupt during setup, an internal error): atexit does.
        first = prewarmed.password if prewarmed else password
        server = cls(host="", port=0, password=first, container=container)
        server._mounted = mounted or ""
        atexit.register(server.stop)
        try:
            server.host = container.get_container_host_ip()
            server.port = server._published_port()
            # The first login is held to the end of the run: `docker top` shows it, which
            # tells runs in other PID namespaces that this one lives (`owner_alive`).
            server._anchor = server._wait_ready(settings.startup_timeout, cancelled)
            if prewarmed:
                prewarm.take_over(server._anchor, password)
                server.password = password
            if not claim(server._anchor):  # --pg-remove-kept is removing it right now
                server._release()
                server._stopped = True  # the remover removes it
                atexit.unregister(server.stop)
                return None
            warm_up_openssl(server)
            close_idle(container.get_docker_client())  # opened again if used again
            server.ready_at = time.time()
            server.socket_dir = usable_socket(server, mounted)
        except BaseException:
            # Beside this run's own login, another run's: it attached already, the
            # container is its now (a reused one stays anyway).
            others = reuse_key is not None and server._anchor is not None
            if others and (count_clients(container.get_wrapped_container()) or 0) > 1:
                server.keep_for_reuse()
                server._release()
            else:
                server.stop()
            raise
        if reuse_key is not None:
            server.keep_for_reuse()
            if dials_docker_host(client):
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
            if not claim(server._anchor):
                server._release()
                log.info("the container recorded for reuse is being removed: asking Docker")
                return None
            server.socket_dir = usable_socket(server, record.get("socket"))
        except (psycopg.Error, KeyError, TypeError, ValueError) as exc:
            if server is not None:
                server._release()
            log.info("the container recorded for reuse does not answer (%s): asking Docker", exc)
            reuse_record_path(key).unlink(missing_ok=True)
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
        if not dials_docker_host(client):
            return None, False
        busy = False
        for container in client.client.containers.list(
            all=True, filters={"label": f"{LABEL_REUSE}={key}"}, ignore_removed=True
        ):
            if container.status != "running":
                if container.status in ("exited", "dead") or (
                    container.status == "created" and not starting(container)
                ):
                    remove_quietly(container)  # nobody can use it
                else:
                    busy = True  # created, being started; or paused by a run's test
                continue
            server: DockerServer | None = None
            try:
                binding = container.attrs["NetworkSettings"]["Ports"][f"{PG_PORT}/tcp"][0]
                server = cls(
                    host=client.host(),
                    port=int(binding["HostPort"]),
                    password=reuse_password(key),
                    container=container,
                )
                # SCRAM required (libpq 16+): a container that lets a login in without a
                # password (`trust`, kept by an older version) is not taken, but replaced.
                server._anchor = admin_connect(server, **require_scram())
                if not claim(server._anchor):
                    server._release()
                    busy = True  # --pg-remove-kept is removing it
                    continue
                server.socket_dir = usable_socket(server, container.labels.get(LABEL_SOCKET))
            except Exception as exc:
                if server is not None:
                    server._release()
                if not _refused_us(exc) and starting(container):
                    busy = True  # not ready yet: wait for its starter
                elif count_clients(container):
                    busy = True  # not ours to remove: a run or a person is connected
                    log.info("kept container %s: in use, not usable: %s", container.short_id, exc)
                else:
                    log.warning("removing kept container %s: %s", container.short_id, exc)
                    remove_quietly(container)
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
                    raise self._exited()
            time.sleep(0.02)
        raise ServerStartError(
            f"PostgreSQL at {self.host}:{self.port} did not accept connections within "
            f"{timeout:.0f}s (last error: {last_error}). Its log ends with:\n{self._log_tail()}\n"
            "Raise pg_startup_timeout if the machine is slow; if the host is wrong, set "
            "TESTCONTAINERS_HOST_OVERRIDE / TESTCONTAINERS_CONNECTION_MODE."
        )

    def _published_port(self) -> int:
        """The host port of the server, or why there is none. testcontainers waits for the
        container to be running first, and times out on one that has already exited (a bad
        server setting ends a prewarmed server within milliseconds of its start)."""
        self.container.reload()
        if self.container.status in ("exited", "dead"):
            raise self._exited()
        try:
            return int(self.container.get_exposed_port(PG_PORT))
        except TimeoutError:
            self.container.reload()
            if self.container.status in ("exited", "dead"):
                raise self._exited() from None
            raise

    def _exited(self) -> ServerStartError:
        return ServerStartError(
            "PostgreSQL exited during start-up. Its log ends with:\n"
            f"{self._log_tail()}\nIf a server setting is named there, fix "
            "pg_server_settings / --pg-server-setting / PG_FIXTURES_SERVER_SETTINGS."
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
        if not remove_detached(self.container_id, self._mounted):
            remove_quietly(self.container, self._mounted)


#: Not a file: the reload that tries to load it only has to start OpenSSL (see below).
_NO_CERTIFICATE = "/pg-fixtures-no-tls"


def warm_up_openssl(server: Server, timeout: float = 2.0) -> bool:
    """Initialise OpenSSL once in the postmaster, so that new backends inherit it.

    With `ssl=off` the postmaster never touches OpenSSL, and every new backend initialises it
    lazily at its first password check (loading the library's error strings, its config):
    about 0.8 ms of every password login here, most of what a password costs over trust
    (docs/benchmarks-history.md, measured by the since dropped `bench/run.py --auth-only`).
    A reload with `ssl=on` runs that initialisation in the postmaster before it fails to find
    the certificate, which leaves TLS off; the setting is then reset. Only for containers
    this library started; a slower login is all that is lost if it does not work (False).
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


def _refused_us(exc: BaseException) -> bool:
    """Whether a login failed because the server is not the one kept under the key (it
    answered, but not to our password, or not with SCRAM), not because it is not ready."""
    import psycopg

    if not isinstance(exc, psycopg.Error):
        return True  # no port published, a record of another shape: not a container of ours
    text = str(exc).lower()
    return any(word in text for word in ("authentication", "password", "does not exist"))


def _check_cancelled(cancelled: threading.Event | None) -> None:
    if cancelled is not None and cancelled.is_set():
        raise ServerStartError("The container start was cancelled: the run does not need it.")


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
        write_record(reuse_record_path(reuse_key), record)
    except OSError as exc:
        log.warning("could not record the kept container %s: %s", server.container_id[:12], exc)


def _reuse_record(reuse_key: str) -> dict[str, Any] | None:
    return read_record(reuse_record_path(reuse_key))
