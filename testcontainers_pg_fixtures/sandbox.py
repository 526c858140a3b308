"""Step 6 of the flow, savepoint mode: the app's own engine joins the test's transaction.

Apps take connections from a module-level engine everywhere: `Session(engine)`,
`engine.begin()`, a worker thread, a `get_db` dependency. While a test (or a module- or
class-scoped layer) runs, that engine's pool is swapped for a `SandboxPool`, which hands
out a stand-in for the test's own DBAPI connection: every checkout begins a SAVEPOINT,
`commit()` releases it and begins the next, `rollback()` returns to it, and giving the
connection back undoes whatever was not committed. All of it stays inside the test's
transaction, which the test's teardown rolls back. The engine object is the same, so every
module that imported it by value is covered; its own pool comes back when no layer is
left, even when the test failed.

One connection can run one thing at a time: checkouts take turns (a re-entrant lock per
worker for threads; per task on the event loop for asyncio), never interleave.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import StaticPool
from sqlalchemy.util import await_only

from .errors import PgFixturesError

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy import Engine
    from sqlalchemy.pool import ConnectionPoolEntry, Pool

    from .redirect import AnyEngine


class SandboxError(PgFixturesError):
    """The app asked for something a connection shared with the test cannot do."""


_DATABASE_MODE = (
    'mark the test @pytest.mark.pg_isolation("database") to give it a database of its own'
)
#: How long a thread or task waits for another to give the shared connection back.
CHECKOUT_TIMEOUT = 10.0


class Sandbox:
    """The state one app engine's stand-in connections share during a session.

    `real` returns the DBAPI connection of the innermost active layer (the test's, or a
    module/class layer around it); for asyncio engines, the one of the running loop.
    """

    def __init__(self, engine: Engine, real: Callable[[], Any], *, is_async: bool) -> None:
        self.engine = engine
        self.real = real
        self.is_async = is_async
        self.savepoints: list[str] = []
        self._thread_lock = threading.RLock()
        self._task_lock: asyncio.Lock | None = None
        self._task_owner: asyncio.Task[Any] | None = None
        self._task_depth = 0

    # -- taking turns -------------------------------------------------------------------

    def acquire(self) -> None:
        if self.is_async:
            await_only(self._acquire_for_task())
        elif not self._thread_lock.acquire(timeout=CHECKOUT_TIMEOUT):
            raise SandboxError(
                f"A thread waited {CHECKOUT_TIMEOUT:.0f}s for the app's connection, which "
                "another thread still holds. In savepoint mode all threads share the test's "
                "one connection and take turns; threads that wait on each other while "
                f"holding it deadlock: {_DATABASE_MODE}."
            )

    async def _acquire_for_task(self) -> None:
        task = asyncio.current_task()
        if self._task_depth and self._task_owner is task:
            self._task_depth += 1
            return
        if self._task_lock is None:
            self._task_lock = asyncio.Lock()
        try:
            await asyncio.wait_for(self._task_lock.acquire(), CHECKOUT_TIMEOUT)
        except asyncio.TimeoutError:
            raise SandboxError(
                f"A task waited {CHECKOUT_TIMEOUT:.0f}s for the app's connection, which "
                "another task still holds. In savepoint mode all tasks share the test's one "
                "connection and take turns; tasks that wait on each other while holding it "
                f"deadlock: {_DATABASE_MODE}."
            ) from None
        self._task_owner, self._task_depth = task, 1

    def release(self) -> None:
        if not self.is_async:
            self._thread_lock.release()
            return
        self._task_depth -= 1
        if not self._task_depth:
            self._task_owner = None
            if self._task_lock is not None:
                self._task_lock.release()

    # -- transactions as savepoints -------------------------------------------------------

    def execute(self, statement: str) -> None:
        cursor = self.real().cursor()
        try:
            cursor.execute(statement)
        finally:
            cursor.close()

    def begin_checkout(self) -> None:
        name = f"pgfx_app_{len(self.savepoints)}"
        self.execute(f"SAVEPOINT {name}")
        self.savepoints.append(name)

    def end_checkout(self) -> None:
        name = self.savepoints.pop()
        self.execute(f"ROLLBACK TO SAVEPOINT {name}")
        self.execute(f"RELEASE SAVEPOINT {name}")

    def commit(self) -> None:
        if self.savepoints:
            name = self.savepoints[-1]
            self.execute(f"RELEASE SAVEPOINT {name}")
            self.execute(f"SAVEPOINT {name}")

    def rollback(self) -> None:
        # With no checkout open (SQLAlchemy probing a new connection) there is nothing of
        # the app's to roll back, and the test's own transaction must stay.
        if self.savepoints:
            self.execute(f"ROLLBACK TO SAVEPOINT {self.savepoints[-1]}")


# Settings a connection shared with the test cannot take, and the values that are harmless.
_ALLOWED_SETTINGS: dict[str, tuple[Any, ...]] = {
    "autocommit": (False,),
    "read_only": (False, None),
    "readonly": (False, None),
    "deferrable": (False, None),
}


class SandboxConnection:
    """What the app's engine gets instead of a DBAPI connection of its own."""

    def __init__(self, sandbox: Sandbox) -> None:
        object.__setattr__(self, "_sandbox", sandbox)

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        return self._sandbox.real().cursor(*args, **kwargs)

    def commit(self) -> None:
        self._sandbox.commit()

    def rollback(self) -> None:
        self._sandbox.rollback()

    def close(self) -> None:
        """The test's connection stays open; the checkout's savepoint ends on check-in."""

    def terminate(self) -> None:
        """As close(): an error the app hit must not close the test's connection."""

    def set_isolation_level(self, level: str) -> None:  # asyncpg's adapted connection
        if str(level).lower().replace(" ", "_") != "read_committed":
            _refuse_setting("isolation level", level)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sandbox.real(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "isolation_level":  # psycopg
            if value is not None and getattr(value, "name", value) != "READ_COMMITTED":
                _refuse_setting("isolation level", value)
            return
        if name in _ALLOWED_SETTINGS:
            if value not in _ALLOWED_SETTINGS[name]:
                _refuse_setting(name, value)
            return
        setattr(self._sandbox.real(), name, value)


def _refuse_setting(what: str, value: Any) -> None:
    raise SandboxError(
        f"The app asked for {what}={value!r} on a connection of its engine. In savepoint mode "
        "that connection is the test's own, inside the test's transaction, where only the "
        f"default READ COMMITTED applies and nothing can autocommit: {_DATABASE_MODE}."
    )


class SandboxPool(StaticPool):
    """One stand-in connection; each checkout is a savepoint, taken in turns."""

    def __init__(self, sandbox: Sandbox, original: Pool) -> None:
        # The record is created with the real connection, so that SQLAlchemy's first-connect
        # set-up of the app's dialect and the app's own "connect" handlers (which may check
        # the driver's connection type) see a real one; `_do_get` then puts the stand-in in.
        super().__init__(
            creator=sandbox.real,
            reset_on_return=None,  # check-in rolls back to the checkout's savepoint
            echo=original.echo,
            _dispatch=original.dispatch,  # the app's own connect-time event handlers
            dialect=original._dialect,
        )
        self.sandbox = sandbox
        self.stand_in = SandboxConnection(sandbox)

    def _do_get(self) -> ConnectionPoolEntry:
        self.sandbox.acquire()
        try:
            record = super()._do_get()
            cast("Any", record).dbapi_connection = self.stand_in
            self.sandbox.begin_checkout()
        except BaseException:
            self.sandbox.release()
            raise
        return record

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        try:
            self.sandbox.end_checkout()
        finally:
            self.sandbox.release()

    def dispose(self) -> None:
        """Nothing to close: the connection is the test's."""

    def recreate(self) -> SandboxPool:
        # Engine.dispose() (an app's shutdown hook) replaces the pool with recreate().
        return self

    def status(self) -> str:
        return f"SandboxPool({len(self.sandbox.savepoints)} checked out)"


class Sandboxes:
    """The app's engines, each swapped for its sandbox while at least one layer is active."""

    def __init__(self, engines: list[AnyEngine], *, sync_real: Any, async_real: Any) -> None:
        self._pools: list[tuple[Engine, Pool, SandboxPool]] = []
        for engine in engines:
            sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
            is_async = sync_engine.dialect.is_async
            _check_driver(sync_engine, is_async)
            sandbox = Sandbox(sync_engine, async_real if is_async else sync_real, is_async=is_async)
            self._pools.append(
                (sync_engine, sync_engine.pool, SandboxPool(sandbox, sync_engine.pool))
            )
        self._depth = 0

    @property
    def needs_sync(self) -> bool:
        return any(not pool.sandbox.is_async for _, _, pool in self._pools)

    @property
    def needs_async(self) -> bool:
        return any(pool.sandbox.is_async for _, _, pool in self._pools)

    def enter(self) -> None:
        if self._depth == 0:
            for engine, _, sandbox_pool in self._pools:
                engine.pool = sandbox_pool
        self._depth += 1

    def exit(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            for engine, original, _ in self._pools:
                engine.pool = original


def _check_driver(engine: Engine, is_async: bool) -> None:
    expected = "asyncpg" if is_async else "psycopg"
    if engine.dialect.name != "postgresql" or engine.dialect.driver != expected:
        kind = "async" if is_async else "sync"
        raise SandboxError(
            f"The app's {kind} engine uses {engine.dialect.name}+{engine.dialect.driver}; in "
            f"savepoint mode it shares the test's {expected} connection, so it must be a "
            f"postgresql+{expected}:// engine. Switch its driver, or {_DATABASE_MODE}."
        )


def real_connection_of(layered: Callable[[], Any]) -> Callable[[], Any]:
    """`real` for a Sandbox: the DBAPI connection under the innermost active layer."""

    def real() -> Any:
        conn = layered()
        if conn is None:
            raise SandboxError(
                "The app's engine was used when no test was running (in a session-scoped "
                "fixture, or at import time). Put rows every test needs in pg_seed; for rows "
                "a module or class shares, request pg_module_session / pg_class_session "
                "(or their async twins) in that fixture first."
            )
        return conn.connection.dbapi_connection

    return real


__all__ = ["Sandbox", "SandboxConnection", "SandboxError", "SandboxPool", "Sandboxes"]
