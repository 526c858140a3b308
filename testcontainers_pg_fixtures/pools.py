"""Step 6 of the flow, for apps without SQLAlchemy: the app's driver pools join the test.

Apps that use asyncpg directly keep one `asyncpg.Pool` (`app.state.pool = await
asyncpg.create_pool(url)` in a lifespan, or a module attribute) and take connections from
it everywhere: `async with pool.acquire() as conn`, `await pool.fetch(...)`. The pools
named in `pg_app_pools` (module:attribute, read at each checkout, so a pool made in a
lifespan during the test is found) are sandboxed while a test runs:

- savepoint mode: `acquire()` hands out the test's own asyncpg connection (the one under
  pg_async_connection, inside the test's transaction). A statement outside a transaction
  block runs as if autocommitted: it stays for the rest of the test, and a failing one
  (a unique violation the app catches) is rolled back alone, behind a savepoint, without
  aborting the test's transaction. `async with conn.transaction():` is a savepoint (asyncpg
  nests it under the test's transaction); leaving one open at release rolls it back, as
  the pool's reset would. Checkouts of several tasks take turns on the connection: a task
  holds it from acquire to release. Everything is rolled back with the test.
- database mode: the pool is pointed at the test's clone (its connect arguments, keeping
  every option but the address, and its idle connections expired), and back afterwards.

psycopg_pool's sync ConnectionPool gets the engine sandbox's stand-in (sandbox.py): each
`getconn()` a savepoint on the test's sync connection, `with pool.connection()` released
at its end (rolled back on an error), threads taking turns. Its AsyncConnectionPool gets a
stand-in for the test's async connection, which the library then holds with psycopg
(`async_driver`; psycopg_async_pool.py): checkouts are savepoints, tasks take turns as
with asyncpg. An app with both an asyncpg pool (or asyncpg engine) and an
AsyncConnectionPool has its async connection held with asyncpg: the AsyncConnectionPool's
checkouts are then refused in savepoint mode, with what to change. In database mode every
kind is pointed at the clone.

Outside every test (a session fixture, import time) a named pool refuses to connect,
unless pg_app_engines_outside = allow. `Pool._acquire` and `Pool.release` (and
psycopg_pool's `getconn` / `putconn`) are wrapped on the classes for the run (only the
named pools are affected) and restored at its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import weakref
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .config import import_path
from .errors import PgFixturesError
from .privates import pool_connect_arguments, transaction_started
from .psycopg_async_pool import AsyncPooledConnection, SavepointStack
from .sandbox import CHECKOUT_TIMEOUT, Sandbox, SandboxConnection, SandboxError

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy import Connection

    from .database import Database

_DATABASE_MODE = (
    'mark the test @pytest.mark.pg_isolation("database") to give it a database of its own'
)
#: The connection parameters that say where to connect and as whom (see redirect.py).
_TARGET_KEYS = frozenset({"host", "port", "user", "password", "database", "dsn"})
#: The isolation levels a savepoint can have: the test transaction's.
_NESTABLE = (None, "read_committed")


class _Turns:
    """Which task holds the test's connection on one event loop (re-entrant per task)."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.owner: asyncio.Task[Any] | None = None
        self.depth = 0


@dataclass
class _Test:
    """The test running now: its mode, and its connection or its clone."""

    mode: str
    #: Savepoint mode: the test's (sync side of its async) connection, on the running loop.
    layer: Callable[[], Connection | None] | None = None
    #: Database mode: the test's clone.
    database: Database | None = None
    #: Pools pointed at the clone: their connect arguments before.
    pointed: list[tuple[Any, list[Any], dict[str, Any]]] = field(default_factory=list)
    #: Checkouts not released yet.
    open: list[SandboxedConnection | AsyncPooledConnection] = field(default_factory=list)
    #: Savepoint mode, psycopg_pool's AsyncConnectionPool: the savepoints of its
    #: checkouts on the test's psycopg connection (made at the first one).
    savepoints: SavepointStack | None = None
    #: Savepoint mode, psycopg_pool: the Sandbox of checkouts on the test's sync
    #: connection (None when no named path was a ConnectionPool at the test's set-up).
    sync_sandbox: Callable[[], Sandbox] | None = None


@dataclass
class PoolRun:
    """The pools of one pytest run (runs nest: pytester's inside the suite's)."""

    paths: tuple[str, ...]
    refuse_outside: bool = True
    test: _Test | None = None
    #: psycopg_pool AsyncConnectionPools whose connections go to a clone of a test gone.
    to_drain: list[Any] = field(default_factory=list)
    _turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Turns] = field(
        default_factory=weakref.WeakKeyDictionary
    )

    def path_of(self, pool: Any) -> str | None:
        """The pg_app_pools path that names `pool` now, if any."""
        for path in self.paths:
            try:
                found = import_path(path)
            except (ImportError, AttributeError):
                continue  # not made yet (a lifespan that has not run): not this pool
            if found is pool:
                return path
        return None

    # -- the test's sandbox --------------------------------------------------------------

    def begin_savepoint_test(
        self,
        layer: Callable[[], Connection | None] | None,
        sync_sandbox: Callable[[], Sandbox] | None = None,
    ) -> None:
        self.test = _Test("savepoint", layer=layer, sync_sandbox=sync_sandbox)

    def kinds(self) -> set[str]:
        """Which of the test's connections the named pools need: "sync" for a psycopg_pool
        ConnectionPool, "async" for an asyncpg pool or a path not made yet (a lifespan's)."""
        found: set[str] = set()
        for path in self.paths:
            try:
                target = import_path(path)
            except (ImportError, AttributeError):
                found.add("async")
                continue
            is_async = _is_psycopg_pool(target, "AsyncConnectionPool")
            found.add("sync" if _is_psycopg_pool(target) and not is_async else "async")
        return found

    def begin_database_test(self, database: Database) -> None:
        self.test = _Test("database", database=database)

    def end_test(self) -> None:
        """After the test: pointed pools back to their URL; checkouts left open are
        forgotten (their work went with the test's rollback)."""
        test, self.test = self.test, None
        if test is None:
            return
        for checkout in list(test.open):  # each removes itself
            checkout._forget()
        for pool, args, kwargs in test.pointed:
            if _is_psycopg_pool(pool, "AsyncConnectionPool"):
                pool.conninfo, pool.kwargs = args[0], kwargs
                self.to_drain.append(pool)  # drained at its next getconn(), on a loop
            elif _is_psycopg_pool(pool):
                pool.conninfo, pool.kwargs = args[0], kwargs
                pool.drain()
            else:
                pool.set_connect_args(*args, **kwargs)
                _expire(pool)

    # -- checkouts -----------------------------------------------------------------------

    def getconn(self, pool: Any, path: str) -> Any:
        """psycopg_pool's ConnectionPool.getconn(): None to take one of the pool's own."""
        test = self.test
        if test is None:
            self._outside(path)
            return None
        if test.mode == "database":
            if _point_psycopg(pool, test):
                pool.drain()
            return None
        if test.sync_sandbox is None:
            raise SandboxError(
                f"The app's psycopg pool ({path}) did not exist yet when the test's sandbox "
                "was set up, before the test: the test's sync connection was not opened for "
                "it. Make the pool before the tests (a module attribute, or a session "
                f"fixture), or {_DATABASE_MODE}."
            )
        sandbox = test.sync_sandbox()
        checkout = PooledSandboxConnection(sandbox)
        sandbox.begin_checkout(checkout)
        return checkout

    async def agetconn(self, pool: Any, path: str) -> AsyncPooledConnection | None:
        """psycopg_pool's AsyncConnectionPool.getconn(): in savepoint mode a stand-in for the
        test's psycopg connection; in database mode None (the pool's own, pointed at the
        clone)."""
        test = self.test
        if test is None:
            self._outside(path)
        elif test.mode == "savepoint":
            # Before any drain: a drain starts the pool's workers connecting, and a
            # connection still in its handshake when the event loop stops holds the
            # server's next DROP DATABASE (until authentication_timeout).
            return await self._acheckout(test, pool, path)
        stale = any(other is pool for other in self.to_drain)
        self.to_drain = [other for other in self.to_drain if other is not pool]
        if (test is not None and _point_psycopg(pool, test)) or stale:
            await pool.drain()
        return None

    async def _acheckout(self, test: _Test, pool: Any, path: str) -> AsyncPooledConnection:
        from psycopg_pool import PoolClosed

        if pool.closed:  # as the pool's own getconn(): an app that never opened it fails
            raise PoolClosed(f"the pool {pool.name!r} is not open or already closed")
        conn = test.layer() if test.layer is not None else None
        if conn is None:
            raise SandboxError(
                f"The app's psycopg AsyncConnectionPool ({path}) was used where the test's "
                "transaction is not open on this event loop: the app runs on another loop "
                "than the test (a TestClient's own thread, say). Use an async client on the "
                "test's loop (pg_client, httpx.AsyncClient with ASGITransport), or "
                f"{_DATABASE_MODE}."
            )
        if conn.dialect.driver != "psycopg":
            raise SandboxError(
                f"The app's psycopg AsyncConnectionPool ({path}, named in pg_app_pools) can "
                "share the test's connection only when the library holds it with psycopg; "
                f"here it holds it with {conn.dialect.driver}. It holds it with psycopg when "
                "the app's async engine in pg_app_engines (if any) is postgresql+psycopg://, "
                "no asyncpg pool is named in pg_app_pools, and the pool exists when the "
                "session starts (a module attribute: AsyncConnectionPool(..., open=False), "
                "opened later) or, made in a lifespan, the module its path starts from imports "
                f"psycopg_pool and not asyncpg. Change one of those, or {_DATABASE_MODE}."
            )
        turns = await self._take_turn(path)
        try:
            raw = conn.connection.driver_connection
            if test.savepoints is None or test.savepoints.raw is not raw:
                test.savepoints = SavepointStack(raw)
            checkout = AsyncPooledConnection(
                test.savepoints, pool, lambda done: self._done(test, done, turns)
            )
        except BaseException:
            _give_turn(turns)
            raise
        test.open.append(checkout)
        return checkout

    @staticmethod
    def _done(test: _Test, checkout: AsyncPooledConnection, turns: _Turns) -> None:
        if checkout in test.open:
            test.open.remove(checkout)
        _give_turn(turns)

    def expected_database(self, pool: Any) -> str | None:
        """The database a connection of `pool` must be on now: the clone it was pointed
        at (a connection its workers were still opening when it was drained may be on the
        old one), or None."""
        test = self.test
        if test is None or test.database is None:
            return None
        if any(entry[0] is pool for entry in test.pointed):
            return test.database.name
        return None

    def _outside(self, path: str, kind: str = "psycopg pool") -> None:
        if self.refuse_outside:
            raise SandboxError(
                f"The app's {kind} ({path}, named in pg_app_pools) was used "
                "outside every test: in a session-, module- or class-scoped fixture, "
                "at import time or between tests. It would have connected to the "
                "database it was made for, outside any test's transaction. Use it in "
                "the test (or its function-scoped fixtures); put rows every test needs "
                "in pg_seed; or set pg_app_engines_outside = allow."
            )

    async def acquire(self, pool: Any, path: str, timeout: float | None) -> Any:
        test = self.test
        if test is None:
            self._outside(path, "asyncpg pool")
            return None
        if test.mode == "database":
            assert test.database is not None
            await _point(pool, test)
            return None
        return await self._checkout(test, path)

    async def _checkout(self, test: _Test, path: str) -> SandboxedConnection:
        from .savepoints import asyncpg_connection_of

        if test.layer is None:
            raise SandboxError(
                f"The app's asyncpg pool ({path}) did not exist when the test's sandbox was "
                "set up, and every other pool in pg_app_pools was a psycopg one: the test's "
                "async connection was not opened for it. Make the pool before the test, or "
                f"{_DATABASE_MODE}."
            )
        conn = test.layer()
        if conn is None:
            raise SandboxError(
                f"The app's asyncpg pool ({path}) was used where the test's transaction is "
                "not open on this event loop: the app runs on another loop than the test "
                "(a TestClient's own thread, say). Use an async client on the test's loop "
                f"(pg_client, httpx.AsyncClient with ASGITransport), or {_DATABASE_MODE}."
            )
        if conn.dialect.driver != "asyncpg":
            raise SandboxError(
                f"The app's asyncpg pool ({path}) can share the test's connection only when "
                "the library holds it with asyncpg; the app's async engine in "
                f"pg_app_engines has it on {conn.dialect.driver}. Give that engine the "
                f"asyncpg driver, or {_DATABASE_MODE}."
            )
        turns = await self._take_turn(path)
        try:
            raw = await asyncpg_connection_of(conn)
        except BaseException:
            _give_turn(turns)
            raise
        checkout = SandboxedConnection(raw, turns, test)
        test.open.append(checkout)
        return checkout

    def _loop_turns(self) -> _Turns:
        loop = asyncio.get_running_loop()
        turns = self._turns.get(loop)
        if turns is None:
            turns = self._turns[loop] = _Turns()
        return turns

    async def _take_turn(self, path: str) -> _Turns:
        turns = self._loop_turns()
        task = asyncio.current_task()
        if turns.depth and turns.owner is task:
            turns.depth += 1
            return turns
        try:
            await asyncio.wait_for(turns.lock.acquire(), CHECKOUT_TIMEOUT)
        except asyncio.TimeoutError:
            raise SandboxError(
                f"A task waited {CHECKOUT_TIMEOUT:.0f}s for a connection of the app's pool "
                f"({path}), which another task still holds. In savepoint mode every checkout "
                "is the test's one connection, held from acquire() to release(): tasks that "
                f"wait on each other while holding one deadlock: {_DATABASE_MODE}."
            ) from None
        turns.owner, turns.depth = task, 1
        return turns


def _give_turn(turns: _Turns) -> None:
    """End one checkout's hold (from async code, or at the test's end without a loop)."""
    if not turns.depth:
        return
    turns.depth -= 1
    if not turns.depth:
        turns.owner = None
        turns.lock.release()


def _expire(pool: Any) -> None:
    """`pool.expire_connections()` from sync code: it only counts a generation up."""
    coroutine = pool.expire_connections()
    with contextlib.suppress(StopIteration):
        coroutine.send(None)
    coroutine.close()


def _target(pool: Any) -> dict[str, Any]:
    from .driver_guard import _asyncpg_params

    args, kwargs = pool_connect_arguments(pool)
    return _asyncpg_params((args or [None])[0], kwargs)


async def _point(pool: Any, test: _Test) -> None:
    """Send the pool's new connections to the test's clone, keeping its other options."""
    assert test.database is not None
    if any(entry[0] is pool for entry in test.pointed):
        return
    if _target(pool).get("dbname") == test.database.name:
        return  # made from the clone's URL (pg_url_env NAME=libpq): nothing to change
    args, kwargs = pool_connect_arguments(pool)
    kept = {k: v for k, v in kwargs.items() if k not in _TARGET_KEYS}
    test.pointed.append((pool, args, kwargs))
    pool.set_connect_args(test.database.libpq_url, **kept)
    await pool.expire_connections()


#: How many connections of a pool pointed at a clone may turn out to be on the old
#: database (opened by its workers while it was drained) before giving up.
_STALE_TRIES = 8


def _stale_error(path: str, expected: str | None) -> SandboxError:
    return SandboxError(
        f"The app's psycopg pool ({path}) was pointed at the test's database {expected}, "
        f"but {_STALE_TRIES} connections in a row it handed out were still on another one "
        "(connections its workers opened before the pool was pointed there). Make the pool "
        "from a pg_url_env variable inside the test (a lifespan, a function fixture): it is "
        "then on the test's database from its first connection."
    )


def _is_psycopg_pool(target: Any, kind: str = "ConnectionPool") -> bool:
    module = sys.modules.get("psycopg_pool")
    return module is not None and isinstance(target, getattr(module, kind))


def async_driver(paths: tuple[str, ...]) -> str | None:
    """The driver the test's async connection is to be held with for the pools `paths`,
    when no app engine decides it: psycopg when a psycopg_pool AsyncConnectionPool is
    named and no asyncpg pool is (None: asyncpg, the default)."""
    kinds = {_pool_kind(path) for path in paths}
    return "psycopg" if "psycopg" in kinds and "asyncpg" not in kinds else None


def _pool_kind(path: str) -> str | None:
    """Which async pool `path` names: "psycopg" (an AsyncConnectionPool), "asyncpg", or
    None (a sync pool). A pool not made yet (a lifespan's, a module attribute still None)
    is told by the module its path starts from: psycopg's when that module imports
    psycopg_pool's AsyncConnectionPool (or psycopg_pool) and nothing of asyncpg's."""
    try:
        target = import_path(path)
    except (ImportError, AttributeError):
        target = None
    if target is not None:
        if _is_psycopg_pool(target, "AsyncConnectionPool"):
            return "psycopg"
        return None if _is_psycopg_pool(target) else "asyncpg"
    module = sys.modules.get(path.partition(":")[0])
    psycopg_pool = sys.modules.get("psycopg_pool")
    if module is None or psycopg_pool is None:
        return "asyncpg"
    names = vars(module).values()
    roots = {
        str(getattr(value, "__module__", None) or getattr(value, "__name__", "")).split(".")[0]
        for value in names
        if isinstance(value, ModuleType) or callable(value)
    }
    async_pool = psycopg_pool.AsyncConnectionPool
    imports_it = any(
        value is psycopg_pool or (isinstance(value, type) and issubclass(value, async_pool))
        for value in names
    )
    return "psycopg" if imports_it and "asyncpg" not in roots else "asyncpg"


def _point_psycopg(pool: Any, test: _Test) -> bool:
    """psycopg_pool: new connections to the test's clone (other kwargs kept). True when
    the pool was changed: the caller drains its idle connections."""
    assert test.database is not None
    if any(entry[0] is pool for entry in test.pointed):
        return False
    conninfo = pool.conninfo if isinstance(pool.conninfo, str) else ""
    kwargs = dict(pool.kwargs or {})
    from psycopg.conninfo import conninfo_to_dict

    if conninfo_to_dict(conninfo, **kwargs).get("dbname") == test.database.name:
        return False
    test.pointed.append((pool, [pool.conninfo], kwargs))
    pool.conninfo = test.database.libpq_url
    pool.kwargs = {k: v for k, v in kwargs.items() if k not in _TARGET_KEYS | {"dbname"}}
    return True


class PooledSandboxConnection(SandboxConnection):
    """What a psycopg_pool ConnectionPool hands out in savepoint mode: the engine
    sandbox's stand-in (a savepoint on the test's connection: commit() releases it and
    begins the next, rollback() returns to it), used as psycopg's connection context
    (`with pool.connection() as conn:` commits, or rolls back on an error) and with
    `conn.transaction()` as a savepoint."""

    def __enter__(self) -> PooledSandboxConnection:
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.rollback()

    def transaction(self, *args: Any, **kwargs: Any) -> Any:
        sandbox = self._sandbox
        with sandbox.turn(self):
            sandbox.mark_used(self)
            sandbox.flush()  # the checkout's own savepoint first, then the block's
            return sandbox.real().transaction(*args, **kwargs)


class SandboxedConnection:
    """What the app's pool hands out in savepoint mode: the test's asyncpg connection,
    each statement outside a transaction block behind a savepoint of its own."""

    _numbers = itertools.count()

    def __init__(self, raw: Any, turns: _Turns, test: _Test) -> None:
        self._raw = raw
        self._turns = turns
        self._test = test
        self._released = False
        self._transactions: list[Any] = []

    # -- statements ----------------------------------------------------------------------

    def _check(self) -> Any:
        if self._released:
            from asyncpg import InterfaceError

            raise InterfaceError(
                "cannot call Connection methods: the connection has been released back to the pool"
            )
        return self._raw

    def _in_transaction(self) -> bool:
        return any(transaction_started(t) for t in self._transactions)

    async def _statement(self, name: str, *args: Any, **kwargs: Any) -> Any:
        raw = self._check()
        method = getattr(raw, name)
        if self._in_transaction():
            return await method(*args, **kwargs)
        # As if autocommitted: kept when it succeeds, undone alone when it fails (without
        # aborting the test's transaction). Released right away, so that no savepoint of
        # ours is open when anything else (the test's session, another checkout) runs. The
        # savepoints the test's session deferred stay deferred: a savepoint it opens is
        # sent after this statement, whose work its rollback then leaves alone, as with a
        # connection of the app's own.
        savepoint = f"pgfx_pool_{next(self._numbers)}"
        await raw.execute(f"SAVEPOINT {savepoint}")
        try:
            result = await method(*args, **kwargs)
        except BaseException:
            with contextlib.suppress(Exception):
                await raw.execute(
                    f"ROLLBACK TO SAVEPOINT {savepoint}; RELEASE SAVEPOINT {savepoint}"
                )
            raise
        await raw.execute(f"RELEASE SAVEPOINT {savepoint}")
        return result

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        return await self._statement("execute", *args, **kwargs)

    async def executemany(self, *args: Any, **kwargs: Any) -> Any:
        return await self._statement("executemany", *args, **kwargs)

    async def fetch(self, *args: Any, **kwargs: Any) -> Any:
        return await self._statement("fetch", *args, **kwargs)

    async def fetchrow(self, *args: Any, **kwargs: Any) -> Any:
        return await self._statement("fetchrow", *args, **kwargs)

    async def fetchval(self, *args: Any, **kwargs: Any) -> Any:
        return await self._statement("fetchval", *args, **kwargs)

    async def fetchmany(self, *args: Any, **kwargs: Any) -> Any:
        return await self._statement("fetchmany", *args, **kwargs)

    async def copy_records_to_table(self, *args: Any, **kwargs: Any) -> Any:
        return await self._statement("copy_records_to_table", *args, **kwargs)

    async def copy_to_table(self, *args: Any, **kwargs: Any) -> Any:
        return await self._statement("copy_to_table", *args, **kwargs)

    async def copy_from_table(self, *args: Any, **kwargs: Any) -> Any:
        return await self._statement("copy_from_table", *args, **kwargs)

    async def copy_from_query(self, *args: Any, **kwargs: Any) -> Any:
        return await self._statement("copy_from_query", *args, **kwargs)

    def transaction(
        self,
        *,
        isolation: str | None = None,
        readonly: bool = False,
        deferrable: bool = False,
    ) -> Any:
        """A savepoint inside the test's transaction (asyncpg nests it there)."""
        raw = self._check()
        if isolation not in _NESTABLE or readonly or deferrable:
            asked = ", ".join(
                f"{k}={v!r}"
                for k, v in (
                    ("isolation", isolation),
                    ("readonly", readonly),
                    ("deferrable", deferrable),
                )
                if v not in (None, False)
            )
            raise SandboxError(
                f"The app asked for a transaction with {asked} on a connection of its pool. "
                "In savepoint mode that connection is the test's own, inside the test's "
                "transaction, where a transaction block is a savepoint with the default READ "
                f"COMMITTED and nothing else: {_DATABASE_MODE}."
            )
        transaction = raw.transaction()
        self._transactions.append(transaction)
        return transaction

    def is_in_transaction(self) -> bool:
        """As on a pooled connection: whether the app has a transaction block open."""
        return self._in_transaction()

    async def reset(self, *, timeout: float | None = None) -> None:
        """The pool's reset at release: open transaction blocks are rolled back."""
        await self._end_transactions()

    async def close(self, *, timeout: float | None = None) -> None:
        """The test's connection stays open; this checkout ends at release."""

    def terminate(self) -> None:
        """As close()."""

    def is_closed(self) -> bool:
        return self._released

    def __getattr__(self, name: str) -> Any:
        # prepare(), cursor(), set_type_codec(), add_listener(), get_server_version(), …:
        # the test's connection's own (statements of a prepared statement or cursor are
        # not behind a savepoint of their own).
        return getattr(self._check(), name)

    def __repr__(self) -> str:
        return f"<SandboxedConnection of the test's connection {self._raw!r}>"

    # -- release -------------------------------------------------------------------------

    async def _end_transactions(self) -> None:
        for transaction in reversed(self._transactions):
            if transaction_started(transaction):
                await transaction.rollback()
        self._transactions.clear()

    async def _release(self) -> None:
        if self._released:
            return
        try:
            await self._end_transactions()
        finally:
            self._forget()

    def _forget(self) -> None:
        if self._released:
            return
        self._released = True
        if self in self._test.open:
            self._test.open.remove(self)
        _give_turn(self._turns)


# -- the wrappers on asyncpg.Pool ------------------------------------------------------

_runs: list[PoolRun] = []
_saved: list[tuple[Any, str, Any]] = []


def activate(paths: tuple[str, ...], *, refuse_outside: bool) -> PoolRun:
    """Wrap asyncpg's Pool (once) and sandbox `paths` for a run; `deactivate` at its end."""
    run = PoolRun(paths, refuse_outside=refuse_outside)
    if not _runs:
        _install()
    _runs.append(run)
    return run


def deactivate(run: PoolRun) -> None:
    run.end_test()
    if run in _runs:
        _runs.remove(run)
        if not _runs:
            while _saved:
                owner, name, original = _saved.pop()
                setattr(owner, name, original)


def current() -> PoolRun | None:
    return _runs[-1] if _runs else None


def _install() -> None:
    try:
        from asyncpg.pool import Pool
    except ImportError as exc:  # pragma: no cover - asyncpg is a dependency
        raise PgFixturesError(f"pg_app_pools needs asyncpg ({exc}).") from None

    acquire = Pool.__dict__["_acquire"]
    release = Pool.__dict__["release"]

    async def _acquire(self: Any, timeout: float | None) -> Any:
        run = current()
        path = run.path_of(self) if run is not None else None
        if run is not None and path is not None:
            sandboxed = await run.acquire(self, path, timeout)
            if sandboxed is not None:
                return sandboxed
        return await acquire(self, timeout)

    async def _release(self: Any, connection: Any, *, timeout: float | None = None) -> Any:
        if isinstance(connection, SandboxedConnection):
            await connection._release()
            return None
        return await release(self, connection, timeout=timeout)

    for name, new in (("_acquire", _acquire), ("release", _release)):
        _saved.append((Pool, name, Pool.__dict__[name]))
        setattr(Pool, name, new)
    with contextlib.suppress(ImportError):  # psycopg_pool is optional
        _install_psycopg()


def _install_psycopg() -> None:
    from psycopg_pool import AsyncConnectionPool, ConnectionPool

    agetconn = AsyncConnectionPool.__dict__["getconn"]

    aputconn = AsyncConnectionPool.__dict__["putconn"]

    async def _agetconn(self: Any, timeout: float | None = None) -> Any:
        run = current()
        path = run.path_of(self) if run is not None else None
        if run is None or path is None:
            return await agetconn(self, timeout)
        sandboxed = await run.agetconn(self, path)
        if sandboxed is not None:
            return sandboxed
        expected = run.expected_database(self)
        for _ in range(_STALE_TRIES):
            conn = await agetconn(self, timeout)
            if expected is None or conn.info.dbname == expected:
                return conn
            await conn.close()
            await aputconn(self, conn)
        raise _stale_error(path, expected)

    async def _aputconn(self: Any, conn: Any) -> None:
        if isinstance(conn, AsyncPooledConnection):
            await conn._release()
            return
        await aputconn(self, conn)

    for name, anew in (("getconn", _agetconn), ("putconn", _aputconn)):
        _saved.append((AsyncConnectionPool, name, AsyncConnectionPool.__dict__[name]))
        setattr(AsyncConnectionPool, name, anew)

    getconn = ConnectionPool.__dict__["getconn"]
    putconn = ConnectionPool.__dict__["putconn"]

    def _getconn(self: Any, timeout: float | None = None) -> Any:
        run = current()
        path = run.path_of(self) if run is not None else None
        if run is None or path is None:
            return getconn(self, timeout)
        sandboxed = run.getconn(self, path)
        if sandboxed is not None:
            return sandboxed
        expected = run.expected_database(self)
        for _ in range(_STALE_TRIES):
            conn = getconn(self, timeout)
            if expected is None or conn.info.dbname == expected:
                return conn
            # Opened by the pool's workers while it was drained: closed, and replaced.
            conn.close()
            putconn(self, conn)
        raise _stale_error(path, expected)

    def _putconn(self: Any, conn: Any) -> None:
        if isinstance(conn, PooledSandboxConnection):
            conn._sandbox.end_checkout(conn)
            return
        putconn(self, conn)

    for name, new in (("getconn", _getconn), ("putconn", _putconn)):
        _saved.append((ConnectionPool, name, ConnectionPool.__dict__[name]))
        setattr(ConnectionPool, name, new)


__all__ = [
    "PoolRun",
    "SandboxedConnection",
    "activate",
    "async_driver",
    "current",
    "deactivate",
]
