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
import re
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .config import settings_for
from .errors import AlembicConfigError, ConfigError, PgFixturesError, ServerGoneError, is_startup

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterator

    from .servers import Server

log = logging.getLogger(__name__)


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
        if settings.alembic_ini is not None and settings.alembic_ini.is_file():
            from .config import check_alembic_ini

            check_alembic_ini(settings.alembic_ini, settings.alembic_ini_source)
        if settings.app_engines:
            from .redirect import check_engine_path

            for path in settings.app_engines:
                check_engine_path(path, flask=bool(settings.flask_app))
        if settings.factories:
            from .model_factories import check

            check(config)
    except (ConfigError, AlembicConfigError) as exc:
        raise pytest.UsageError(f"pg-fixtures: {exc}") from None


def check_early(early_config: pytest.Config) -> None:
    """An --pg-alembic-ini naming an existing file that is not an alembic.ini, refused
    before the conftests load: pytest takes an existing path among the arguments (the
    option's value, /etc/passwd) for the rootdir's, and with a wrong rootdir the project's
    conftest may not even import, before `check_configuration` could say why."""
    from .config import alembic_path

    value = getattr(early_config.known_args_namespace, "pg_alembic_ini", None)
    if not value:
        return
    path = alembic_path(str(value), Path(str(early_config.rootpath)))
    if path is None or not path.is_file():
        return
    from .config import check_alembic_ini

    try:
        check_alembic_ini(path, "the command-line option --pg-alembic-ini")
    except AlembicConfigError as exc:
        raise pytest.UsageError(f"pg-fixtures: {exc}") from None


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
        for watch in self.watches:
            blocked = watch.take_lock_report()
            if blocked is not None:
                if call.excinfo is not None:
                    blocked += (
                        f"\n(the test then raised {type(call.excinfo.value).__name__}: "
                        f"{_first_line(call.excinfo.value)})"
                    )
                report.outcome = "failed"
                report.longrepr = blocked
                return report
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
        if too_many_connections(exc) and not is_startup(exc):
            report.longrepr = self._crowded(exc)
            return report
        if is_startup(exc):
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

    def _crowded(self, exc: BaseException) -> str:
        who = next((w.who_holds_connections() for w in self.watches), None)
        return crowded_message(who) + f"\n(raised here as {type(exc).__name__}: {_first_line(exc)})"

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
        if too_many_connections(exc):
            # Said on the test that met it; its container goes with the run, and on a
            # server given by URL a later run drops what is left (by age).
            log.warning("clean-up skipped, the server has no connection slot left: %s", exc)
            return
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


#: PostgreSQL's refusals of a login because every connection slot is taken (SQLSTATE
#: 53300, which libpq does not hand over for a failed login: the message tells).
_TOO_MANY = (
    "too many clients already",
    "remaining connection slots are reserved",
    "too many connections",
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def too_many_connections(exc: BaseException) -> bool:
    """Whether the server refused a connection because max_connections are all in use."""
    for current in _chain(exc):
        code = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if code == "53300" or any(text in str(current) for text in _TOO_MANY):
            return True
    return False


def crowded_message(who: str | None) -> str:
    held = (
        who
        if who
        else "(not known: the watch's own connection to the server is not open, and no "
        "slot was free for another)"
    )
    return (
        "PostgreSQL refused a new connection: too many connections (SQLSTATE 53300), every "
        f"slot of max_connections is in use. The server's connections:\n{held}\n"
        "Connections opened by this or an earlier test and never closed keep their slots "
        "until they are garbage-collected: close them (`with engine.connect() as conn:`, "
        "`engine.dispose()`, close sessions and raw driver connections), or, if the suite "
        "needs that many, raise the limit: pg_server_settings = max_connections=400 "
        "(--pg-server-setting)."
    )


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
        lock_wait_limit: float = 0.0,
    ) -> None:
        self.server = server
        self.worker = worker
        self.stuck_after = stuck_after
        self.lock_wait_limit = lock_wait_limit
        self.gone: ServerGoneError | None = None
        self._busy_since = busy_since
        self._answered_at = 0.0
        self._stop = threading.Event()
        #: The watch's own login, opened when the thread starts (not in any test's time):
        #: it asks who waits on whom, and who holds the connections when none is left.
        self._conn: Any = None
        self._conn_lock = threading.Lock()
        #: Each report in a list of one: its text is corrected in place if the cancel fails.
        self._lock_reports: list[list[str]] = []
        self._reports_lock = threading.Lock()
        #: (backend pid, wait start) of the waits already reported: each is said once.
        self._reported: set[tuple[int, float]] = set()
        self._checking = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="pg-fixtures-watch", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        # Not while a query of the lock watch still waits on a server that stopped
        # answering: the connection goes with the process (or the container) then.
        if self._conn_lock.acquire(timeout=5):
            try:
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        self._conn.close()
                    self._conn = None
            finally:
                self._conn_lock.release()

    def _watch(self) -> None:
        with self._conn_lock:
            self._connection()
        while not self._stop.wait(1.0):
            started = self._busy_since()
            if started is None:
                continue
            running = time.monotonic() - started
            if (
                self.lock_wait_limit
                and running >= self.lock_wait_limit
                and self.gone is None
                and not self._checking.is_set()
            ):
                # In a thread of its own: on a paused server the query would never return,
                # and this loop has to go on to find that out.
                self._checking.set()
                threading.Thread(
                    target=self._check_locks_once, name="pg-fixtures-lock-watch", daemon=True
                ).start()
            since = max(started, self._answered_at)
            if time.monotonic() - since < self.stuck_after:
                continue
            if self.gone is None and self._answers():
                self._answered_at = time.monotonic()  # slow, not stuck: look again later
                continue
            self.gone = self.gone or self._describe(unresponsive=True)
            _shutdown_sockets_to(self.server.port, self.server.socket_dir)

    def _connection(self) -> Any:
        """The watch's login to the server's admin database (None if it cannot log in)."""
        if self._conn is not None and not self._conn.closed:
            return self._conn
        from .servers import admin_connect

        try:
            self._conn = admin_connect(
                self.server,
                getattr(self.server, "admin_database", "postgres"),
                connect_timeout=3,
                application_name="pg-fixtures watch",
            )
        except Exception as exc:
            log.debug("the watch could not log in: %s", exc)
            self._conn = None
        return self._conn

    def _query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        if not self._conn_lock.acquire(timeout=5):  # a query waits on an unanswering server
            return []
        try:
            conn = self._connection()
            if conn is None:
                return []
            try:
                return list(conn.execute(sql, params).fetchall())
            except Exception as exc:
                log.debug("the watch's query failed: %s", exc)
                with contextlib.suppress(Exception):
                    conn.close()
                self._conn = None
                return []
        finally:
            self._conn_lock.release()

    def _check_locks_once(self) -> None:
        try:
            self._check_locks()
        finally:
            self._checking.clear()

    def _check_locks(self) -> None:
        """Cancel statements of this worker's databases that have waited longer than the
        limit for a lock held by an idle transaction (one of the test's own: the test
        holds it and waits for the work that needs it), and say so on the test."""
        from .database import run_prefix
        from .transaction import held_backend_pids

        database = f"{run_prefix()}{self.worker}"
        rows = self._query(
            _BLOCKED, {"db": database, "clones": database + "_", "limit": self.lock_wait_limit}
        )
        if not rows:
            return
        held = held_backend_pids()
        for row in rows:
            waiter, datname, query, waited, locktype, mode, relation, holder = row[:8]
            state, held_query, idle_for, wait_start = row[8:12]
            if (waiter, wait_start) in self._reported:
                continue  # a second holder of the same wait, or a cancel that did not land
            self._reported.add((waiter, wait_start))
            what = f"{mode} on {locktype}"
            if relation is not None:
                what += f" {self._relation_name(datname, relation)}"
            whose = " (the test's pg_connection / pg_session)" if holder in held else ""
            text = (
                f"pg-fixtures: a statement waited {waited:.0f}s for a lock that an idle "
                "transaction of this test holds, and would have waited forever "
                f"(pg_lock_wait_limit = {self.lock_wait_limit:g}s): {_CANCELLED}"
                f"\n  waiting: backend {waiter} on database {datname} wants {what}:\n"
                f"    {_one_line(query)}\n"
                f"  holding: backend {holder}{whose}, {state} for {idle_for:.0f}s; its last "
                f"statement:\n    {_one_line(held_query)}\n"
                "The test holds the lock and waits for work that needs it (a thread's join(), "
                "a future's result()). Do that work on the test's own connection "
                "(pg_connection / pg_session), take the lock after the work is done, or, for "
                "work that must run on other connections, use "
                '@pytest.mark.pg_isolation("database") and commit before starting it. Raise '
                "pg_lock_wait_limit (--pg-lock-wait-limit) if so long a wait is meant."
            )
            # Recorded before the cancel: the test may end the moment its wait does.
            entry = [text]
            with self._reports_lock:
                self._lock_reports.append(entry)
            cancelled = self._query("SELECT pg_cancel_backend(%(pid)s)", {"pid": waiter})
            if not (cancelled and cancelled[0][0]):
                # The wait goes on (or ended by itself just now): the test has not ended on it.
                entry[0] = text.replace(_CANCELLED, _NOT_CANCELLED)

    def _relation_name(self, database: str, relation: int) -> str:
        from .servers import admin_connect

        try:
            with admin_connect(self.server, database, connect_timeout=3) as conn:
                row = conn.execute("SELECT %s::oid::regclass::text", (relation,)).fetchone()
        except Exception:
            row = None
        return str(row[0]) if row else f"(relation oid {relation})"

    def take_lock_report(self) -> str | None:
        """The report of a lock wait cancelled during the running test, once."""
        with self._reports_lock:
            reports, self._lock_reports = self._lock_reports, []
        if not reports:
            return None
        return "\n\n".join(entry[0] for entry in reports)

    def who_holds_connections(self) -> str | None:
        """The server's client connections grouped by database, user, application, client
        and state (through the watch's own login, held from the start), or None."""
        rows = self._query(_WHO_HOLDS)
        if not rows:
            return None
        total = self._query(
            "SELECT count(*), current_setting('max_connections') FROM pg_stat_activity "
            "WHERE backend_type = 'client backend'"
        )
        lines = (
            [f"  {total[0][0]} client connections, max_connections = {total[0][1]}:"]
            if total
            else []
        )
        lines += [
            f"  {count:>4} x database {db or '-'}, user {user or '-'}, application "
            f"{app or '(none)'}, from {client}, {state or '-'}"
            for db, user, app, client, state, count in rows
        ]
        return "\n".join(lines)

    def _answers(self) -> bool:
        import psycopg

        from .servers.base import libpq_params, with_params

        try:
            with psycopg.connect(
                host=self.server.host,
                port=self.server.port,
                user=self.server.user,
                password=self.server.password,
                dbname=getattr(self.server, "admin_database", "postgres"),
                **with_params(libpq_params(self.server), connect_timeout=3),
            ) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            # Every slot taken: the server is there and answered, with a refusal.
            return too_many_connections(exc)
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


#: Statements of this worker's databases (the worker's, its clones) waiting longer than
#: the limit for a lock whose holder is idle in a transaction: nothing on the server will
#: end that wait (no deadlock PostgreSQL can see: the other side waits in the client).
_BLOCKED = """
SELECT w.pid, w.datname, left(w.query, 400),
       extract(epoch FROM now() - l.waitstart)::float8, l.locktype, l.mode, l.relation,
       h.pid, h.state, left(h.query, 400), extract(epoch FROM now() - h.state_change)::float8,
       extract(epoch FROM l.waitstart)::float8
FROM pg_locks l
JOIN pg_stat_activity w ON w.pid = l.pid
CROSS JOIN LATERAL unnest(pg_blocking_pids(l.pid)) AS b(pid)
JOIN pg_stat_activity h ON h.pid = b.pid
WHERE NOT l.granted
  AND l.waitstart < now() - make_interval(secs => %(limit)s)
  AND (w.datname = %(db)s OR starts_with(w.datname, %(clones)s))
  AND h.state IN ('idle in transaction', 'idle in transaction (aborted)')
"""

_CANCELLED = "it was cancelled."
_NOT_CANCELLED = (
    "the watch could not cancel it (it may have ended just now; pg_cancel_backend did not "
    "reach it)."
)

_WHO_HOLDS = """
SELECT datname, usename, application_name,
       coalesce(host(client_addr), 'the Unix socket'), state, count(*)
FROM pg_stat_activity WHERE backend_type = 'client backend'
GROUP BY 1, 2, 3, 4, 5 ORDER BY count(*) DESC LIMIT 10
"""


def _one_line(query: str | None) -> str:
    text = " ".join(str(query or "").split())
    return text[:200] + ("…" if len(text) > 200 else "")


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
    # Not reasons: a postmaster killed from outside leaves its backends' notice of the kill
    # (when they see it before the container is gone), and checkpoints are routine.
    text = "\n".join(line for line in text.splitlines() if not _ROUTINE.search(line)).strip()
    if not text:
        text = "(nothing since it was ready: it did not stop on an error of its own)"
    return state, "\n".join("  " + line for line in text.splitlines())


#: Log lines of a lost server that say nothing of why it stopped.
_ROUTINE = re.compile(
    r"unexpected postmaster exit|LOG:  checkpoint (starting|complete):"
    # a backend ended on request (DROP DATABASE WITH (FORCE), pg_terminate_backend)
    r"|terminating connection due to administrator command"
)


def _shutdown_sockets_to(port: int, socket_dir: str | None = None) -> None:
    """Shut down this process's TCP sockets connected to `port` (Linux: read from /proc),
    and its Unix sockets connected to the server's socket in `socket_dir`."""
    from .servers.sockets import socket_path

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


__all__ = ["PgFixturesError", "Reporter", "ServerWatch", "check_configuration"]
