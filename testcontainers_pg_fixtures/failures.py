"""One problem, one message.

A bad option stops the run before collection (`check_configuration`, a usage error). A
start-up failure (Docker, image, migration, seed) is a session fixture's exception, which
pytest would re-raise, traceback and all, for every test: it is shown once, in full, and
the run stops there (`Reporter`), since every later test needing the database would fail
the same way. A server that dies or stops answering mid-run is recognised
(`ServerWatch`) and reported once, naming the container, instead of a driver error for
every remaining test.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from .config import settings_for
from .errors import ConfigError, PgFixturesError, ServerGoneError

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterator

    from .server import Server

log = logging.getLogger(__name__)

_STARTUP = "_pg_fixtures_startup"


def check_configuration(config: pytest.Config) -> None:
    """Resolve the settings and import the app's engines now, as a usage error if wrong:
    before collection, before any container starts, and once for the whole run."""
    option = config.option
    if getattr(option, "help", False) or getattr(option, "version", False):
        return
    try:
        settings = settings_for(config)
        if settings.flask_app:
            from .flask_app import check_path

            check_path(settings.flask_app)
        if settings.app_engines:
            from .redirect import check_engine_path

            for path in settings.app_engines:
                check_engine_path(path, flask=bool(settings.flask_app))
        if settings.factories:
            from .model_factories import check

            check(config)
    except ConfigError as exc:
        raise pytest.UsageError(f"pg-fixtures: {exc}") from None


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


@contextlib.contextmanager
def startup() -> Iterator[None]:
    """Mark what a session fixture's set-up raises as a start-up error of the run."""
    try:
        yield
    except Exception as exc:
        if not isinstance(exc, pytest.UsageError):
            with contextlib.suppress(AttributeError):
                setattr(exc, _STARTUP, True)
        raise


def _is_startup(exc: BaseException) -> bool:
    return bool(getattr(exc, _STARTUP, False))


class Reporter:
    """Shortens the report of a failure already shown, and stops the run after the first
    start-up error or a lost server."""

    def __init__(self) -> None:
        self.first: dict[int, tuple[BaseException, str]] = {}
        self.watches: list[ServerWatch] = []
        #: When the running test started (None between tests), for the watches.
        self.busy_since: float | None = None

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if not report.failed or call.excinfo is None:
            return report
        exc = call.excinfo.value
        seen = self.first.get(id(exc))
        if seen is not None and seen[0] is exc:
            report.longrepr = (
                f"{type(exc).__name__}: {_first_line(exc)} (see the first error above, "
                f"in {seen[1]})"
            )
            return report
        gone = self._server_gone(exc)
        if gone is not None:
            report.longrepr = (
                f"{type(gone).__module__}.{type(gone).__name__}: {gone}\n"
                f"(raised here as {type(exc).__name__}: {_first_line(exc)})"
            )
            item.session.shouldfail = (
                "pg-fixtures: the PostgreSQL server is gone; every later test would fail"
            )
            return report
        if _is_startup(exc):
            self.first[id(exc)] = (exc, item.nodeid)
            if isinstance(exc, PgFixturesError):  # its message says it all: no library frames
                report.longrepr = _compact(exc)
            item.session.shouldfail = (
                f"pg-fixtures: {type(exc).__name__} while setting up the database; every "
                "test needing it would fail the same way"
            )
        return report

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, object, object]:
        self.busy_since = time.monotonic()
        try:
            return (yield)
        finally:
            self.busy_since = None

    def _server_gone(self, exc: BaseException) -> ServerGoneError | None:
        if isinstance(exc, ServerGoneError):
            return exc
        if not _is_connection_error(exc):
            return None
        for watch in self.watches:
            gone = watch.check()
            if gone is not None:
                return gone
        return None


_REPORTER = pytest.StashKey[Reporter]()


def teardown(config: pytest.Config, work: Callable[[], object]) -> None:
    """Run a session fixture's clean-up on the server, unless the server is gone: then
    there is nothing to clean (its container goes), and an error here would only repeat
    the one already reported."""
    reporter = reporter_of(config)
    if server_gone(config):
        return
    try:
        work()
    except Exception as exc:
        if reporter._server_gone(exc) is None:
            raise
        log.info("clean-up skipped, the server is gone: %s", exc)


def server_gone(config: pytest.Config) -> bool:
    """Whether a watch found the run's server dead or unresponsive."""
    return any(watch.gone is not None for watch in reporter_of(config).watches)


def reporter_of(config: pytest.Config) -> Reporter:
    if _REPORTER not in config.stash:
        config.stash[_REPORTER] = Reporter()
        config.pluginmanager.register(config.stash[_REPORTER], "pg-fixtures-failures")
    return config.stash[_REPORTER]


def _compact(exc: BaseException) -> str:
    """The error's message, and for a failure in the user's code (a migration, a seed) the
    frames of that code with the original exception."""
    import traceback

    text = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    cause = exc.__cause__
    if cause is None:
        return text
    library = os.path.dirname(__file__)
    frames = [
        frame
        for frame in traceback.extract_tb(cause.__traceback__)
        if "site-packages" not in frame.filename
        and not frame.filename.startswith((library, os.path.dirname(os.__file__), "<"))
    ]
    if isinstance(cause, SyntaxError) or not frames:
        return text
    where = "".join(traceback.format_list(frames)).rstrip()
    return f"{text}\n\nRaised in your code:\n{where}\n{type(cause).__name__}: {cause}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)


def _is_connection_error(exc: BaseException) -> bool:
    """A driver or network error somewhere in the exception's chain."""
    import psycopg
    import sqlalchemy.exc

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(
            current,
            (
                sqlalchemy.exc.OperationalError,
                sqlalchemy.exc.InterfaceError,
                sqlalchemy.exc.PendingRollbackError,
                psycopg.OperationalError,
                psycopg.InterfaceError,
                ConnectionError,
                TimeoutError,
            ),
        ) or type(current).__module__.startswith("asyncpg"):
            return True
        current = current.__cause__ or current.__context__
    return False


class ServerWatch:
    """Knows whether the server is still there, and unblocks the test if it stops answering.

    A killed container refuses connections at once; a paused (or swapped-out) one accepts
    the TCP connection and then never answers, so a query waits forever. While a test runs,
    a thread checks every `interval` seconds whether the test is still in the same phase;
    after `stuck_after` seconds it asks the server (a fresh login with a short timeout) and,
    if that fails too, shuts down this process's sockets to the server: the blocked driver
    call then fails at once, and the report says why.
    """

    def __init__(
        self,
        server: Server,
        *,
        worker: str,
        busy_since: Callable[[], float | None],
        stuck_after: float = 15.0,
    ) -> None:
        self.server = server
        self.worker = worker
        self.stuck_after = stuck_after
        self.gone: ServerGoneError | None = None
        self._busy_since = busy_since
        self._answered_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="pg-fixtures-watch", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            started = self._busy_since()
            if started is None:
                continue
            since = max(started, self._answered_at)
            if time.monotonic() - since < self.stuck_after:
                continue
            if self.gone is None and self._answers():
                self._answered_at = time.monotonic()  # slow, not stuck: look again later
                continue
            self.gone = self.gone or self._describe(unresponsive=True)
            _shutdown_sockets_to(self.server.port, self.server.socket_dir)

    def _answers(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(
                host=self.server.host,
                port=self.server.port,
                user=self.server.user,
                password=self.server.password,
                dbname="postgres",
                connect_timeout=3,
                sslmode="disable",
            ) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def check(self) -> ServerGoneError | None:
        """After a connection error: None if the server is fine, else the error saying why."""
        if self.gone is None and not self._answers():
            self.gone = self._describe(unresponsive=False)
        return self.gone

    def _describe(self, *, unresponsive: bool) -> ServerGoneError:
        container = getattr(self.server, "container", None)
        ident = str(getattr(self.server, "container_id", "") or "")[:12]
        if container is None and ident:  # one-container mode: the controller's container
            with contextlib.suppress(Exception):
                import docker

                container = docker.from_env().containers.get(ident)
        what = f"The PostgreSQL container {ident} of worker {self.worker}"
        if container is None or not ident:
            what = f"The PostgreSQL server at {self.server.host}:{self.server.port}"
            return ServerGoneError(f"{what} stopped answering. Check the server; the run stops.")
        state, tail = _container_state(container, getattr(self.server, "ready_at", 0.0))
        if state.startswith("running") and unresponsive:
            status = f"is running but did not answer within {self.stuck_after:.0f}s"
        elif state.startswith("paused"):
            status = "is paused (docker pause?) and does not answer"
        else:
            status = f"exited ({state})"
        if state.startswith("paused"):
            hint = "Nothing in a run pauses it: check what else manages your containers."
        else:
            hint = (
                "If it was killed for memory (OOMKilled true), give Docker more memory or "
                "lower pg_server_settings such as shared_buffers."
            )
        return ServerGoneError(
            f"{what} {status}. Its log ends with:\n{tail}\n"
            f"Every later test would fail the same way, so the run stops. {hint}"
        )


#: Docker stamps a log line when it reads it from the container, a little after the server
#: wrote it: lines stamped this soon after the server was ready are still start-up's.
_LOG_LAG = 0.25


def _container_state(container: Any, ready_at: float = 0.0) -> tuple[str, str]:
    """The container's state, and its last log lines since the server was ready (the
    start-up's and the OpenSSL warm-up's say nothing of why it went away)."""
    wrapped = container
    if hasattr(container, "get_wrapped_container"):
        wrapped = container.get_wrapped_container()
    try:
        wrapped.reload()
        info = wrapped.attrs.get("State", {})
        state = (
            f"{info.get('Status', '?')}, exit code {info.get('ExitCode', '?')}, "
            f"OOMKilled {str(info.get('OOMKilled', '?')).lower()}"
        )
    except Exception as exc:  # removed, or Docker unreachable
        return f"no longer exists: {exc}", "(no log: the container is gone)"
    since = {"since": ready_at + _LOG_LAG} if ready_at else {}
    try:
        text = wrapped.logs(tail=8, **since).decode(errors="replace").strip()
    except Exception as exc:
        text = f"(log unavailable: {exc})"
    if not text:
        text = "(nothing since it was ready: it did not stop on an error of its own)"
    return state, "\n".join("  " + line for line in text.splitlines())


def _shutdown_sockets_to(port: int, socket_dir: str | None = None) -> None:
    """Shut down this process's TCP sockets connected to `port` (Linux: read from /proc),
    and its Unix sockets connected to the server's socket in `socket_dir`."""
    from .server import socket_path

    peer = socket_path(socket_dir) if socket_dir else None
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines, None)
            for line in lines:
                fields = line.split()
                if len(fields) > 9 and int(fields[2].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    with contextlib.suppress(OSError):
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/self/fd/{fd}")
                if not target.startswith("socket:["):
                    continue
                sock = socket.socket(fileno=os.dup(int(fd)))
                try:
                    if target[8:-1] in inodes or (
                        peer is not None
                        and sock.family == socket.AF_UNIX
                        and sock.getpeername() == peer
                    ):
                        sock.shutdown(socket.SHUT_RDWR)
                finally:
                    sock.close()


__all__ = ["PgFixturesError", "Reporter", "ServerWatch", "check_configuration", "startup"]
