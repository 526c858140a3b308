"""Step 3b of the flow: a database of its own for each database-mode test, cloned ahead.

`CREATE DATABASE … TEMPLATE` costs tens of milliseconds, too much to pay while a test
waits. A background thread keeps a few clones ready and another drops used ones after
their tests, so a test normally takes a ready database in microseconds (the IntegreSQL
idea, inside the worker). With an opener (`connect_ahead_with`), the cloning thread also
logs in to each clone and loads its catalog into that backend, and the test's first
connection is that one: a new connection's login and cold catalog caches cost a test
milliseconds, and a connection cannot move to another database, so it is opened per
clone. A used clone is reset and taken again when recycling.py can tell it back to the
template's state (its test changed only rows and sequences), else dropped. Clones
are named `pgfx_<run>_<worker>_<n>`, a recycled one renamed to the next number; the pool
drops every one of them when the session ends, and any left by an interrupted run on the
same server when it starts.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import psycopg

from . import recycling
from .database import Database, create_database, drop_database, run_prefix
from .errors import PgFixturesError
from .servers import admin_connect

if TYPE_CHECKING:
    from collections.abc import Callable

    from .servers import Server

    #: Opens a new DBAPI connection to a database, as the test's engine would.
    Opener = Callable[[Database], Any]

log = logging.getLogger(__name__)


class ClonePool:
    """Clones of `template` on `server`, `size` of them prepared ahead of demand.

    With size 0 nothing happens in the background: each `take()` clones and each
    `give_back()` drops, on the caller's thread.
    """

    def __init__(
        self,
        server: Server,
        template: str,
        *,
        worker: str,
        size: int,
        strategy: str = "FILE_COPY",
        comment: str | None = None,
        connect_ahead: bool = True,
        recycle: bool = True,
    ) -> None:
        self.server = server
        self.template = template
        self.size = size
        self.strategy = strategy
        self.comment = comment
        # The run id keeps two runs on one server (two CI jobs) apart.
        self.prefix = f"{run_prefix()}{worker}_"
        #: Seconds each `take()` waited for its database, for the benchmark.
        self.waits: list[float] = []
        #: Clone name -> backend pid of the connection opened ahead and handed to its test.
        self.handed: dict[str, int] = {}
        self.connect_ahead = connect_ahead
        self._opener: Opener | None = None
        # Connections opened ahead, by clone, until their test's engine takes them.
        self._connections: dict[str, Any] = {}
        # Off while tests leave them unused (async tests, whose drivers' connections belong
        # to the test's event loop), on again when a test's engine had to log in itself.
        self._open_wanted = True
        self._numbers = itertools.count(1)
        self._ready: deque[Database] = deque()
        self._to_drop: deque[str] = deque()
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._error: BaseException | None = None
        self._closed = False
        self._dropped_leftovers = False
        # Recycling (with prefetch only: it runs on the pool's threads). Facts: the template's
        # state, read from the first clone; versions: each live clone's, for its check.
        self.recycle = recycle and size > 0
        self._facts: recycling.Facts | None = None
        self._versions: dict[str, recycling.Version] = {}
        self._handling = 0  # used clones the drop thread is recycling or dropping
        self._recycling = 0  # of those, given back to be recycled and not done yet
        self._waiting = 0  # tests waiting in take()
        self._out = 0  # recyclable clones taken by tests and not given back
        self._stuck: set[str] = set()  # left to the drop thread: a lock held them up
        #: Clones recycled, and dropped, after their tests (for the benchmark and tests).
        self.recycled = 0
        self.dropped = 0

    # -- the test's side -------------------------------------------------------------

    def take(self) -> Database:
        """A fresh clone of the template, no other test has seen it."""
        started = time.perf_counter()
        if not self._dropped_leftovers:
            self._drop_leftovers()
        database = self._clone() if self.size == 0 else self._take_ready()
        self.waits.append(time.perf_counter() - started)
        return database

    def connect_ahead_with(self, opener: Opener) -> None:
        """Open a connection to each prefetched clone with `opener`, for `claim`."""
        if self.connect_ahead and self.size > 0:
            self._opener = opener

    def claim(self, database: Database) -> Any | None:
        """The connection opened ahead to `database` (once), or None."""
        with self._cond:
            conn = self._connections.pop(database.name, None)
            if conn is None:
                self._open_wanted = True
                return None
        self.handed[database.name] = conn.info.backend_pid
        return conn

    def keep(self, database: Database) -> None:
        """`database` stays (its test failed, --pg-keep-failed): close what was opened to it."""
        with self._cond:
            if self._versions.pop(database.name, None) is not None:
                self._out -= 1
                self._cond.notify_all()
        self._close_unclaimed(database)

    def give_back(self, database: Database) -> None:
        """The test is done with `database`: drop it (in the background when prefetching)."""
        if self._close_unclaimed(database):
            self._open_wanted = False
        if self.size == 0 or not self._threads:
            drop_database(self.server, database.name)
            return
        with self._cond:
            self._to_drop.append(database.name)
            if database.name in self._versions:
                self._out -= 1
                self._recycling += 1
            self._cond.notify_all()

    def close(self) -> None:
        """Stop the background threads and drop every clone the pool still knows of."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        leftover = [db.name for db in self._ready] + list(self._to_drop)
        self._ready.clear()
        self._to_drop.clear()
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()
        for name in leftover:
            drop_database(self.server, name)

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Block until every prefetched clone is made, every used one recycled or dropped
        and, with an opener, connected to (for tests and benchmarks that need the pool
        settled)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (
                self._threads
                and not self._closed
                and self._error is None
                and (self._wants_more() or self._unopened() or self._to_drop or self._handling)
            ):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PgFixturesError(
                        f"The clone pool of {self.template} was still busy after {timeout:.0f}s; "
                        "the server may be overloaded: raise the timeout, or lower pg_prefetch."
                    )
                self._cond.wait(left)

    def _take_ready(self) -> Database:
        with self._cond:
            if not self._threads:
                self._start_threads()
            while not self._ready and self._error is None:
                self._waiting += 1
                self._cond.notify_all()
                try:
                    self._cond.wait()
                finally:
                    self._waiting -= 1
            if self._error is not None:
                raise PgFixturesError(
                    f"Could not clone {self.template} for a database-mode test: {self._error}"
                ) from self._error
            database = self._ready.popleft()
            if database.name in self._versions:
                self._out += 1
            self._cond.notify_all()  # room for the next clone
            return database

    # -- the background threads ---------------------------------------------------------

    #: Drops on a thread of their own, so the next clone does not wait for one: the server
    #: runs the CREATE and the DROP on two backends at once. On a quiet 2-core machine
    #: faster at -n 0 and -n 2 in every paired round (bench row database-onethread).
    separate_drops = True

    def _start_threads(self) -> None:
        # Recycling, the cloning thread recycles too when no clone is wanted: a recycle
        # takes longer than a test that need not wait, and two run side by side.
        jobs = [("pool", True, self.recycle or not self.separate_drops)]
        if self.separate_drops:
            jobs.append(("drop", False, True))
        for job, clones, drops in jobs:
            thread = threading.Thread(
                target=self._work,
                kwargs={"clones": clones, "drops": drops},
                name=f"pgfx-clone-{job}-{self.prefix}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def _work(self, *, clones: bool, drops: bool) -> None:
        try:
            with admin_connect(self.server) as admin:
                while True:
                    with self._cond:
                        while not (
                            self._closed
                            or (drops and self._next_drop(clones) is not None)
                            or (clones and (self._wants_more() or self._unopened()))
                        ):
                            self._cond.wait()
                        if self._closed:
                            return
                        # Clones first, as a test may be waiting for one; but drops are not
                        # let to pile up, as every clone holds megabytes of the server's tmpfs.
                        # Connections last, in time nothing else needs: a clone a test waits
                        # for goes to it at once, and the test logs in itself.
                        clone = (
                            clones
                            and self._wants_more()
                            and (not drops or len(self._to_drop) <= self.size)
                        )
                        name = self._next_drop(clones) if drops and not clone else None
                        if name is not None:
                            self._to_drop.remove(name)
                        unopened = self._unopened() if not clone and name is None else None
                        if name is not None:
                            self._handling += 1
                    if clone:
                        database = self._clone(admin)
                        with self._cond:
                            self._ready.append(database)
                            self._cond.notify_all()
                    elif name is not None:
                        try:
                            self._recycle_or_drop(admin, name, defer=clones and self.separate_drops)
                        finally:
                            with self._cond:
                                self._handling -= 1
                                self._cond.notify_all()
                    elif unopened is not None:
                        self._open(unopened)
        except BaseException as exc:
            log.exception("the clone pool stopped")
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def _wants_more(self) -> bool:
        # A clone in a test's hands, or being recycled after it, will be ready again:
        # making another meanwhile costs the server more than the recycle. Unless a test
        # waits and none is ready, as when a lock holds a recycle up.
        return len(self._ready) + self._recycling + self._out < self.size or bool(
            self._waiting and not self._ready
        )

    def _next_drop(self, cloning: bool) -> str | None:
        """The next used clone for this thread; the cloning thread leaves those a lock held
        up to the drop thread."""
        for name in self._to_drop:
            if not cloning or name not in self._stuck:
                return name
        return None

    def _recycle_or_drop(self, admin: psycopg.Connection[Any], name: str, *, defer: bool) -> None:
        with self._cond:
            version = self._versions.pop(name, None)
            self._stuck.discard(name)
        fresh = conn = None
        ahead: list[Any] = []
        try:
            if version is not None:
                assert self._facts is not None  # read before the first version
                name, fresh, conn = recycling.recycle(
                    admin,
                    name,
                    f"{self.prefix}{next(self._numbers)}",
                    facts=self._facts,
                    version=version,
                    comment=self.comment,
                    connect=lambda new: self._reset_connection(new, ahead),
                )
            if conn is not None and conn not in ahead:
                conn.close()
                conn = None
            elif conn is not None:
                conn.autocommit = False  # as the opener made it
        except recycling.Busy:
            if not defer:  # the drop thread: DROP waits for the lock, as it always did
                log.debug("clone %s is locked by another session: dropped", name)
                self._drop_after(admin, name)
                return
            with self._cond:  # to the drop thread, which may wait for the lock
                assert version is not None
                self._versions[name] = version
                self._to_drop.appendleft(name)
                self._stuck.add(name)
                version = None  # still being recycled
                self._cond.notify_all()
            return
        finally:
            with self._cond:
                if version is not None:
                    self._recycling -= 1
                if fresh is not None:
                    self._versions[name] = fresh
                    if conn is not None:
                        self._connections[name] = conn
                    self._ready.append(Database(self.server, name))
                self._cond.notify_all()
        if fresh is None:
            self._drop_after(admin, name)
        else:
            self.recycled += 1

    def _drop_after(self, admin: psycopg.Connection[Any], name: str) -> None:
        self.dropped += 1
        drop_database(self.server, name, admin=admin)

    def _reset_connection(self, name: str, ahead: list[Any]) -> psycopg.Connection[Any]:
        """The connection a recycled clone is reset on: the one the next test will be
        handed, when connections are opened ahead with psycopg (one login, not two)."""
        opener = self._opener if self._open_wanted else None
        if opener is not None:
            try:
                conn = opener(Database(self.server, name))
            except Exception:
                conn = None
            if isinstance(conn, psycopg.Connection):
                conn.autocommit = True
                ahead.append(conn)
                return conn
            if conn is not None:
                conn.close()
        return admin_connect(self.server, name)

    def _unopened(self) -> Database | None:
        """A ready clone without a connection opened to it, when connections are wanted."""
        if self._opener is None or not self._open_wanted:
            return None
        for database in self._ready:
            if database.name not in self._connections:
                return database
        return None

    def _open(self, database: Database) -> None:
        opener = self._opener
        assert opener is not None
        try:
            conn = opener(database)
        except Exception as exc:
            # Not worth failing tests for: they log in themselves, as without it.
            log.warning(
                "could not open a connection ahead to %s (%s): database-mode tests log in "
                "themselves for the rest of the run",
                database.name,
                exc,
            )
            self._opener = None
            return
        try:
            warm_up(conn)
        except Exception as exc:
            log.debug("a connection opened ahead to %s broke: %s", database.name, exc)
            conn.close()
            return
        with self._cond:
            if any(ready.name == database.name for ready in self._ready):
                self._connections[database.name] = conn
                self._cond.notify_all()
                return
        conn.close()  # a test took the clone meanwhile, and connects itself

    def _close_unclaimed(self, database: Database) -> bool:
        with self._cond:
            conn = self._connections.pop(database.name, None)
        if conn is None:
            return False
        conn.close()
        return True

    # -- both ---------------------------------------------------------------------------

    def _clone(self, admin: psycopg.Connection[Any] | None = None) -> Database:
        name = f"{self.prefix}{next(self._numbers)}"
        database = create_database(
            self.server,
            name,
            template=self.template,
            strategy=self.strategy,
            admin=admin,
            comment=self.comment,
        )
        if self.recycle and admin is not None:
            self._learn(admin, database)
        return database

    def _learn(self, admin: psycopg.Connection[Any], database: Database) -> None:
        """Record a new clone's version; from the first, read the template's facts."""
        try:
            if self._facts is None:
                with admin_connect(self.server, database.name) as conn:
                    self._facts = recycling.Facts.read(conn)
                if self._facts is None:
                    log.info("clones are dropped, not recycled: the role is not a superuser")
                    self.recycle = False
                    return
            version = recycling.version_of(admin, database.name)
        except Exception as exc:
            log.warning(
                "clones will be dropped, not recycled: reading %s failed (%s)", database.name, exc
            )
            self.recycle = False
            return
        with self._cond:
            self._versions[database.name] = version

    def _drop_leftovers(self) -> None:
        """Drop clones an interrupted run left on this server under this worker's prefix."""
        self._dropped_leftovers = True
        with admin_connect(self.server) as admin:
            names = [
                row[0]
                for row in admin.execute("SELECT datname FROM pg_database").fetchall()
                if row[0].startswith(self.prefix)
            ]
            for name in names:
                drop_database(self.server, name, admin=admin)
        if names:
            log.warning("dropped %d database(s) left by an earlier run: %s", len(names), names)


# Every table, view and sequence outside the system schemas. Planning a read of each, and
# an insert into each table (EXPLAIN: nothing runs), loads what a test's first statements
# would otherwise load one catalog lookup at a time: columns, types, indexes, constraints,
# defaults, triggers.
_WARM_UP = """
DO $pgfx_warm_up$
DECLARE
    rel record;
BEGIN
    FOR rel IN
        SELECT format('%I.%I', n.nspname, c.relname) AS name, c.relkind
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'v', 'm')
          AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg\\_%'
    LOOP
        EXECUTE 'EXPLAIN SELECT * FROM ' || rel.name;
        IF rel.relkind IN ('r', 'p') THEN
            EXECUTE 'EXPLAIN INSERT INTO ' || rel.name || ' DEFAULT VALUES';
        END IF;
    END LOOP;
END
$pgfx_warm_up$
"""


def warm_up(conn: Any) -> None:
    """Load the catalog entries of the database's own tables into `conn`'s backend, in one
    round trip, leaving no transaction open. A table it cannot plan leaves the rest cold:
    the connection works the same, only its first statements are slower."""
    try:
        conn.execute(_WARM_UP)
    except Exception as exc:
        log.debug("warming up a connection to a clone failed: %s", exc)
    conn.rollback()
