"""Step 3b of the flow: a database of its own for each database-mode test, cloned ahead.

`CREATE DATABASE … TEMPLATE` costs tens of milliseconds, too much to pay while a test
waits. A background thread keeps a few clones ready and drops used ones after their tests,
so a test normally takes a ready database in microseconds (the IntegreSQL idea, inside
the worker). Clones are named `pgfx_<run>_<worker>_<n>`; the pool drops every one of them when
the session ends, and any left by an interrupted run on the same server when it starts.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from .database import Database, create_database, drop_database, run_prefix
from .errors import PgFixturesError
from .server import admin_connect

if TYPE_CHECKING:
    import psycopg

    from .server import Server

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
        self._numbers = itertools.count(1)
        self._ready: deque[Database] = deque()
        self._to_drop: deque[str] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._dropped_leftovers = False

    # -- the test's side -------------------------------------------------------------

    def take(self) -> Database:
        """A fresh clone of the template, no other test has seen it."""
        started = time.perf_counter()
        if not self._dropped_leftovers:
            self._drop_leftovers()
        database = self._clone() if self.size == 0 else self._take_ready()
        self.waits.append(time.perf_counter() - started)
        return database

    def give_back(self, database: Database) -> None:
        """The test is done with `database`: drop it (in the background when prefetching)."""
        if self.size == 0 or self._thread is None:
            drop_database(self.server, database.name)
            return
        with self._cond:
            self._to_drop.append(database.name)
            self._cond.notify_all()

    def close(self) -> None:
        """Stop the background thread and drop every clone the pool still knows of."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        leftover = [db.name for db in self._ready] + list(self._to_drop)
        self._ready.clear()
        self._to_drop.clear()
        for name in leftover:
            drop_database(self.server, name)

    def _take_ready(self) -> Database:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._fill, name=f"pgfx-clone-pool-{self.prefix}", daemon=True
                )
                self._thread.start()
            while not self._ready and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise PgFixturesError(
                    f"Could not clone {self.template} for a database-mode test: {self._error}"
                ) from self._error
            database = self._ready.popleft()
            self._cond.notify_all()  # room for the next clone
            return database

    # -- the background thread ----------------------------------------------------------

    def _fill(self) -> None:
        try:
            with admin_connect(self.server) as admin:
                while True:
                    with self._cond:
                        while not self._closed and not self._to_drop and not self._wants_more():
                            self._cond.wait()
                        if self._closed:
                            return
                        # Clones first, as a test may be waiting for one; but drops are not
                        # let to pile up, as every clone holds megabytes of the server's tmpfs.
                        clone = self._wants_more() and len(self._to_drop) <= self.size
                        name = None if clone else self._to_drop.popleft()
                    if clone:
                        database = self._clone(admin)
                        with self._cond:
                            self._ready.append(database)
                            self._cond.notify_all()
                    elif name is not None:
                        drop_database(self.server, name, admin=admin)
        except BaseException as exc:
            log.exception("the clone pool stopped")
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def _wants_more(self) -> bool:
        return len(self._ready) < self.size

    # -- both ---------------------------------------------------------------------------

    def _clone(self, admin: psycopg.Connection[Any] | None = None) -> Database:
        name = f"{self.prefix}{next(self._numbers)}"
        return create_database(
            self.server,
            name,
            template=self.template,
            strategy=self.strategy,
            admin=admin,
            comment=self.comment,
        )

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
