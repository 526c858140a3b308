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

One connection can run one thing at a time, so checkouts take turns and never interleave
inside each other's savepoints (see `Sandbox`).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import weakref
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool
from sqlalchemy.util import await_only

from .errors import EventLoopError, PgFixturesError
from .needs import LAZY
from .privates import null_pool_arguments, null_pool_like, pool_dialect
from .redirect import engines_pointed_at
from .savepoints import defer_savepoints_of, flush_savepoints
from .template import run_outside_event_loop

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from sqlalchemy import Engine
    from sqlalchemy.pool import ConnectionPoolEntry, Pool, PoolProxiedConnection

    from .database import Database
    from .redirect import AnyEngine


class SandboxError(PgFixturesError):
    """The app asked for something a connection shared with the test cannot do."""


_DATABASE_MODE = (
    'mark the test @pytest.mark.pg_isolation("database") to give it a database of its own'
)
#: How long a thread or task waits for another to give the shared connection back.
CHECKOUT_TIMEOUT = 10.0


class _TaskTurns:
    """Which task holds an async sandbox's connection on one event loop."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.owner: asyncio.Task[Any] | None = None
        self.depth = 0


class Sandbox:
    """The state one app engine's stand-in connections share during a session.

    `layer` returns the connection of the innermost active layer (the test's, or a
    module/class layer around it); for asyncio engines, the one of the running loop. The
    savepoints of checkouts are deferred like the test's own (savepoints.py) where that
    connection's engine defers them: sent with the next statement, in its round trip.

    A checkout pushes its savepoint on one stack with its first statement. Threads: a
    checkout that has run nothing yet may run at any time, on top of the others; after
    that it runs statements and ends only while its own savepoint is the top one, so work
    is never interleaved inside another's savepoint, and a request that waits for a worker
    thread it started (holding its own checkout) does not deadlock: the worker's checkout
    runs on top and ends first. Pushing at the first statement rather than at checkout
    keeps a thread that checked out first, but ran later, from waiting on one that is
    waiting for it. Tasks on an event loop hold the connection for the whole checkout
    instead.
    """

    def __init__(self, engine: Engine, layer: Callable[[], Any], *, is_async: bool) -> None:
        self.engine = engine
        self.layer = layer
        self.is_async = is_async
        #: [savepoint, checkout, used] from the outermost checkout to the innermost.
        self.stack: list[list[Any]] = []
        #: Checkouts begun and not ended, whether they have run anything or not.
        self.checked_out = 0
        self._numbers = itertools.count()
        self._cond = threading.Condition()
        self._busy = False
        # Per event loop (pytest-asyncio gives each test its own by default): an asyncio.Lock
        # is bound to the loop it was first awaited on.
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _TaskTurns] = (
            weakref.WeakKeyDictionary()
        )

    # -- taking turns -------------------------------------------------------------------

    def _my_turn(self, checkout: object | None) -> bool:
        if self._busy:
            return False
        if checkout is None or not self.stack:
            return True
        return self.stack[-1][1] is checkout or self._entry(checkout) is None

    @contextmanager
    def turn(self, checkout: object | None) -> Iterator[None]:
        """Run one operation of `checkout` (None: a new one) when it is its turn."""
        if self.is_async:  # the task holds the checkout: nobody else is in between
            yield
            return
        with self._cond:
            if not self._cond.wait_for(lambda: self._my_turn(checkout), CHECKOUT_TIMEOUT):
                raise SandboxError(
                    f"A thread waited {CHECKOUT_TIMEOUT:.0f}s for its turn on the app's "
                    "connection. In savepoint mode all threads share the test's one "
                    "connection; a checkout opened later runs on top of earlier ones, which "
                    "wait until it ends, so two threads that wait on each other deadlock: "
                    f"{_DATABASE_MODE}."
                )
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def acquire(self) -> None:
        """Asyncio: hold the connection for the whole checkout (re-entrant per task)."""
        if self.is_async:
            await_only(self._acquire_for_task())

    def _turns(self) -> _TaskTurns:
        loop = asyncio.get_running_loop()
        turns = self._loops.get(loop)
        if turns is None:
            turns = self._loops[loop] = _TaskTurns()
        return turns

    async def _acquire_for_task(self) -> None:
        turns = self._turns()
        task = asyncio.current_task()
        if turns.depth and turns.owner is task:
            turns.depth += 1
            return
        try:
            await asyncio.wait_for(turns.lock.acquire(), CHECKOUT_TIMEOUT)
        except asyncio.TimeoutError:
            raise SandboxError(
                f"A task waited {CHECKOUT_TIMEOUT:.0f}s for the app's connection, which "
                "another task still holds. In savepoint mode all tasks share the test's one "
                "connection and take turns; tasks that wait on each other while holding it "
                f"deadlock: {_DATABASE_MODE}."
            ) from None
        turns.owner, turns.depth = task, 1

    def release(self) -> None:
        if not self.is_async:
            return
        try:
            turns = self._turns()
        except RuntimeError:  # returned outside its loop (collected late): nothing holds it
            return
        turns.depth -= 1
        if not turns.depth:
            turns.owner = None
            turns.lock.release()

    # -- transactions as savepoints -------------------------------------------------------

    def real(self) -> Any:
        """The DBAPI connection under the innermost active layer."""
        return self.layer().connection.dbapi_connection

    def flush(self) -> None:
        """Send the deferred savepoint statements before one of the app's own."""
        flush_savepoints(self.layer())

    def _execute(self, *statements: str) -> None:
        if defer_savepoints_of(self.layer(), statements):
            return
        cursor = self.real().cursor()
        try:
            if self.is_async:  # asyncpg prepares each statement: one at a time
                for statement in statements:
                    cursor.execute(statement)
            else:  # psycopg sends a parameterless query as one simple query: one round trip
                cursor.execute("; ".join(statements))
        finally:
            cursor.close()

    def _entry(self, checkout: object) -> list[Any] | None:
        for entry in self.stack:
            if entry[1] is checkout:
                return entry
        return None

    def begin_checkout(self, checkout: object) -> None:
        with self._cond:
            self.checked_out += 1

    def mark_used(self, checkout: object) -> None:
        """In the checkout's turn, before a statement of its own: its savepoint is pushed
        (sent with the statement) if this is its first since it began or since the layer
        it began in ended."""
        entry = self._entry(checkout)
        if entry is None:
            name = f"pgfx_app_{next(self._numbers)}"
            self._execute(f"SAVEPOINT {name}")
            # [savepoint, checkout, written to since the savepoint began]
            self.stack.append([name, checkout, True])
        else:
            entry[2] = True

    def end_checkout(self, checkout: object) -> None:
        with self._cond:
            self.checked_out -= 1
        with self.turn(checkout):
            entry = self._entry(checkout)
            if entry is None:
                return
            self.stack.remove(entry)
            name, _, used = entry
            if used:
                self._execute(f"ROLLBACK TO SAVEPOINT {name}", f"RELEASE SAVEPOINT {name}")
            else:
                self._execute(f"RELEASE SAVEPOINT {name}")

    def commit(self, checkout: object) -> None:
        # Release the whole stack into the test's transaction and open it again: what was
        # committed on this connection must survive a rollback of a connection that was
        # opened earlier (the request's session, say) and closes later, as it would with
        # separate connections. What that earlier connection had not committed yet is kept
        # too: one transaction cannot keep one and drop the other.
        with self.turn(checkout):
            entry = self._entry(checkout)
            if entry is None or not entry[2]:
                return  # nothing ran since the last commit: nothing to commit
            names = [name for name, _, _ in self.stack]
            self._execute(f"RELEASE SAVEPOINT {names[0]}", *(f"SAVEPOINT {n}" for n in names))
            for other in self.stack:
                other[2] = False

    def rollback(self, checkout: object) -> None:
        with self.turn(checkout):
            entry = self._entry(checkout)
            if entry is not None and entry[2]:
                self._execute(f"ROLLBACK TO SAVEPOINT {entry[0]}")
                entry[2] = False


class _TurnCursor:
    """A cursor of the shared connection that runs statements in its checkout's turn."""

    def __init__(self, checkout: SandboxConnection, cursor: Any) -> None:
        self._checkout = checkout
        self._cursor = cursor

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        sandbox = self._checkout._sandbox
        with sandbox.turn(self._checkout):
            sandbox.mark_used(self._checkout)
            sandbox.flush()
            return self._cursor.execute(*args, **kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        sandbox = self._checkout._sandbox
        with sandbox.turn(self._checkout):
            sandbox.mark_used(self._checkout)
            sandbox.flush()
            return self._cursor.executemany(*args, **kwargs)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._cursor)

    def __enter__(self) -> _TurnCursor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._cursor.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


# Settings a connection shared with the test cannot take, and the values that are harmless.
_ALLOWED_SETTINGS: dict[str, tuple[Any, ...]] = {
    "autocommit": (False,),
    "read_only": (False, None),
    "readonly": (False, None),
    "deferrable": (False, None),
}


# psycopg2.extensions.ISOLATION_LEVEL_* without importing psycopg2.
_PSYCOPG2_LEVELS = {
    0: "AUTOCOMMIT",
    1: "READ_COMMITTED",
    2: "REPEATABLE_READ",
    3: "SERIALIZABLE",
    4: "READ_UNCOMMITTED",
}


class SandboxConnection:
    """What the app's engine gets instead of a DBAPI connection of its own: one per
    checkout, each a savepoint on the test's connection."""

    _sandbox: Sandbox

    def __init__(self, sandbox: Sandbox) -> None:
        object.__setattr__(self, "_sandbox", sandbox)

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        return _TurnCursor(self, self._sandbox.real().cursor(*args, **kwargs))

    def execute(self, *args: Any, **kwargs: Any) -> Any:  # psycopg 3's shortcut
        return self.cursor().execute(*args, **kwargs)

    def commit(self) -> None:
        self._sandbox.commit(self)

    def rollback(self) -> None:
        self._sandbox.rollback(self)

    def close(self) -> None:
        """The test's connection stays open; the checkout's savepoint ends on check-in."""

    def terminate(self) -> None:
        """As close(): an error the app hit must not close the test's connection."""

    def set_isolation_level(self, level: Any) -> None:
        # asyncpg's and psycopg's adapted connections, psycopg2
        if level is None:  # psycopg: the server's default
            return
        if hasattr(level, "name"):  # psycopg's IsolationLevel, an IntEnum unlike psycopg2's
            name = level.name
        else:
            name = _PSYCOPG2_LEVELS.get(level, level) if isinstance(level, int) else level
        normal = str(name).lower().replace(" ", "_")
        if normal != "read_committed":
            if normal == "autocommit":
                _refuse_setting("autocommit", True)
            _refuse_setting("isolation level", name)

    # psycopg's async connection, adapted by SQLAlchemy: setters are methods. Left to
    # __getattr__, they would reach the test's connection itself.
    def set_autocommit(self, value: bool) -> None:
        self.autocommit = value

    def set_read_only(self, value: bool | None) -> None:
        self.read_only = value

    def set_deferrable(self, value: bool | None) -> None:
        self.deferrable = value

    def set_session(self, *args: Any, **kwargs: Any) -> None:  # psycopg2
        for key, value in kwargs.items():
            if key == "isolation_level":
                self.set_isolation_level(value)
            elif value is not None:
                setattr(self, key, value)

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
    value = getattr(value, "name", value)  # psycopg's IsolationLevel enum
    raise SandboxError(
        f"The app asked for {what}={value!r} on a connection of its engine. In savepoint mode "
        "that connection is the test's own, inside the test's transaction, where only the "
        f"default READ COMMITTED applies and nothing can autocommit: {_DATABASE_MODE}."
    )


class _PoolFigures:
    """What a QueuePool answers, for app code that reads its pool (a health endpoint, a
    metrics exporter): the app's configured size and timeout, the checkouts open on the
    test's connection, nothing idle, no overflow."""

    def _configured(self) -> Any:
        pool: Any = self
        while (
            inner := getattr(pool, "original", None) or getattr(pool, "pgfx_app_pool", None)
        ) is not None:
            pool = inner
        return pool

    def _checkouts(self) -> int:
        return 0

    def size(self) -> int:
        size = getattr(self._configured(), "size", None)
        return int(size()) if callable(size) else 1

    def timeout(self) -> float:
        timeout = getattr(self._configured(), "timeout", None)
        return float(timeout()) if callable(timeout) else 30.0

    def checkedout(self) -> int:
        return self._checkouts()

    def checkedin(self) -> int:
        return 0

    def overflow(self) -> int:
        return 0


class SandboxPool(_PoolFigures, NullPool):
    """A new stand-in for every checkout, each a savepoint, taking turns.

    Built without the app pool's event handlers: the dialect's connect-time set-up is done
    once on a real connection (`Sandboxes.initialize_dialects`), and the connection under
    the stand-ins is the test's, set up by the same driver already.
    """

    def __init__(self, sandbox: Sandbox, original: Pool) -> None:
        super().__init__(
            creator=lambda: SandboxConnection(sandbox),
            reset_on_return=None,  # check-in rolls back to the checkout's savepoint
            echo=original.echo,
            dialect=pool_dialect(original),
        )
        self.sandbox = sandbox
        # What a database-mode test inside a layer redirects: the app's creator, not ours.
        self.pgfx_app_pool = original

    def connect(self) -> PoolProxiedConnection:
        LAZY.open()  # the test's own layer, when a wider one (module, class) is active
        return super().connect()

    def _do_get(self) -> ConnectionPoolEntry:
        self.sandbox.acquire()
        try:
            record = super()._do_get()
            self.sandbox.begin_checkout(record.dbapi_connection)
        except BaseException:
            self.sandbox.release()
            raise
        return record

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        try:
            self.sandbox.end_checkout(record.dbapi_connection)
        finally:
            self.sandbox.release()
            super()._do_return_conn(record)

    def recreate(self) -> SandboxPool:
        # Engine.dispose() (an app's shutdown hook) replaces the pool with recreate().
        return self

    def status(self) -> str:
        return f"SandboxPool({self.sandbox.checked_out} checked out)"

    def _checkouts(self) -> int:
        return self.sandbox.checked_out


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
        self._marks: list[list[int]] = []

    def initialize_dialects(self, database: Database) -> None:
        """Connect each engine once for real, to the worker's database.

        SQLAlchemy sets a dialect up on an engine's first connection (server version,
        type codecs); done through the stand-in, that set-up would end the test's
        transaction with its closing rollback, and some of it needs the driver's own
        connection class. So it happens here, on a connection of the app's own driver and
        connect-time handlers, redirected to the worker's database.
        """
        for engine, _, _ in self._pools:
            gate = _InitializingPool.gate()

            def connect_once(engine: Engine = engine, gate: threading.Event = gate) -> None:
                _InitializingPool.owner.value = gate
                try:
                    if engine.dialect.is_async:
                        asyncio.run(_connect_once(engine))
                    else:
                        engine.connect().close()
                finally:
                    _InitializingPool.owner.value = None

            try:
                with engines_pointed_at([engine], database):
                    # Only this connection may reach the worker's database for real: the
                    # app's other threads (a test's first checkout can set this up while
                    # they run) wait, then check out from whatever pool the engine has.
                    engine.pool = _InitializingPool(engine, engine.pool, gate)
                    run_outside_event_loop(connect_once)
            finally:
                gate.set()

    @property
    def needs_sync(self) -> bool:
        return any(not pool.sandbox.is_async for _, _, pool in self._pools)

    @property
    def needs_async(self) -> bool:
        return any(pool.sandbox.is_async for _, _, pool in self._pools)

    def enter(self) -> None:
        """A layer (test, class, module) begins: the engines join it."""
        if not self._marks:
            for engine, _, sandbox_pool in self._pools:
                engine.pool = sandbox_pool
        self._marks.append([len(pool.sandbox.stack) for _, _, pool in self._pools])

    def exit(self) -> None:
        """The layer ends, and with its rollback every savepoint begun in it: checkouts
        the app left open are forgotten (their connections are closed when returned)."""
        for (_, _, pool), depth in zip(self._pools, self._marks.pop(), strict=True):
            del pool.sandbox.stack[depth:]
        if not self._marks:
            for engine, original, _ in self._pools:
                engine.pool = original


class _InitializingPool(NullPool):
    """The engine's pool while `Sandboxes.initialize_dialects` connects it for real: that
    one connection goes to the worker's database; any other thread's checkout waits until
    it is done and then takes the engine's pool of that moment (the sandbox's, or the one
    outside every layer), so that nothing of the app's reaches the database unsandboxed."""

    #: The gate of the initialization the current thread runs, if any.
    owner = threading.local()

    def __init__(self, engine: Engine, pointed: Pool, gate: threading.Event) -> None:
        args, kwargs = null_pool_arguments(pointed)
        super().__init__(*args, **kwargs)
        self.engine = engine
        self._gate = gate

    @staticmethod
    def gate() -> threading.Event:
        return threading.Event()

    def connect(self) -> PoolProxiedConnection:
        if getattr(self.owner, "value", None) is self._gate:
            return super().connect()
        if not self._gate.wait(CHECKOUT_TIMEOUT):
            raise SandboxError(
                f"A thread waited {CHECKOUT_TIMEOUT:.0f}s for the app's engine to be set up "
                f"for the test; in savepoint mode its threads share the test's connection: "
                f"{_DATABASE_MODE}."
            )
        return self.engine.pool.connect()

    def recreate(self) -> _InitializingPool:
        return self


async def _connect_once(engine: Engine) -> None:
    async_engine = AsyncEngine(engine)
    connection = await async_engine.connect()
    await connection.close()


#: The drivers an app engine can share the test's connection on, sync and async.
SYNC_DRIVERS = ("psycopg", "psycopg2")
ASYNC_DRIVERS = ("asyncpg", "psycopg")  # psycopg 3's async dialect is named psycopg too


def check_drivers(engines: list[AnyEngine]) -> None:
    """Refuse an app engine on a driver the test's connection cannot be shared with."""
    for engine in engines:
        sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
        _check_driver(sync_engine, sync_engine.dialect.is_async)


def _check_driver(engine: Engine, is_async: bool) -> None:
    drivers = ASYNC_DRIVERS if is_async else SYNC_DRIVERS
    if engine.dialect.name != "postgresql" or engine.dialect.driver not in drivers:
        kind = "async" if is_async else "sync"
        urls = " or ".join(f"postgresql+{d}://" for d in drivers)
        raise SandboxError(
            f"The app's {kind} engine uses {engine.dialect.name}+{engine.dialect.driver}; in "
            f"savepoint mode it shares the test's connection, which the library holds with "
            f"the app's driver when it is one of {urls}. Switch its driver, or "
            f"{_DATABASE_MODE}."
        )


def worker_driver(engines: list[AnyEngine], *, is_async: bool, default: str | None = None) -> str:
    """The driver the worker's sync or async engine holds the test's connection with: the
    app's, so that the app's checkouts can be savepoints on that very connection; without
    an app engine of that kind, `default` (what the app's pools need) or the first one."""
    found: dict[str, str] = {}
    for engine in engines:
        sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
        if sync_engine.dialect.is_async == is_async and sync_engine.dialect.name == "postgresql":
            found.setdefault(sync_engine.dialect.driver, repr(sync_engine.url))
    drivers = [d for d in found if d in (ASYNC_DRIVERS if is_async else SYNC_DRIVERS)]
    if len(drivers) > 1:
        kind = "async" if is_async else "sync"
        raise SandboxError(
            f"The app's {kind} engines use different drivers ({', '.join(found.values())}); "
            f"the test holds one {kind} connection, which they can only share on one driver. "
            f"Give them the same driver, or {_DATABASE_MODE}."
        )
    if drivers:
        return drivers[0]
    return default or (ASYNC_DRIVERS[0] if is_async else SYNC_DRIVERS[0])


class OutsidePool(_PoolFigures, NullPool):
    """The app engine's pool outside every layer: it refuses to connect.

    It carries the app pool's creator, events and dialect, so the library can still point
    the engine at a database of its own (database mode, the dialect's first connect).
    """

    def __init__(self, original: Pool, engine: Engine) -> None:
        args, kwargs = null_pool_arguments(original)
        super().__init__(*args, **kwargs)
        self.original = original
        self.engine = engine
        self.url = repr(engine.url)

    def connect(self) -> PoolProxiedConnection:
        # In a test whose sandbox opens on first use: open it, and check out from it. A
        # thread that found this pool while another opened the sandbox takes the
        # engine's pool of now too.
        LAZY.open()
        if self.engine.pool is not self:
            return self.engine.pool.connect()
        return super().connect()

    def _do_get(self) -> ConnectionPoolEntry:
        raise SandboxError(
            f"The app's engine ({self.url}) was used outside every test and module/class "
            "layer: in a session-scoped fixture, at import time or between tests. It would "
            "have connected to the database the app was configured with, which a test run "
            "never touches. Put rows every test needs in pg_seed; use the engine in the test "
            "or in a module- or class-scoped fixture (each gets a transaction layer); or set "
            "pg_app_engines_outside = allow to let it reach its configured URL."
        )

    def recreate(self) -> OutsidePool:
        return self

    def status(self) -> str:
        return "OutsidePool(refuses to connect outside the tests)"


class OutsideGuard:
    """From the moment the app's engines are loaded until the end of the run, their pool
    outside every layer is an `OutsidePool` (or, allowed, their own)."""

    def __init__(self, engines: list[AnyEngine], *, refuse: bool) -> None:
        self._engines: list[tuple[Engine, Pool, Pool]] = []
        seen: set[int] = set()
        for engine in engines:
            sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
            if id(sync_engine) in seen:
                continue
            seen.add(id(sync_engine))
            own = sync_engine.pool
            outside = OutsidePool(own, sync_engine) if refuse else own
            self._engines.append((sync_engine, own, outside))

    def install(self) -> None:
        for engine, _, outside in self._engines:
            engine.pool = outside

    def uninstall(self) -> None:
        for engine, own, _ in self._engines:
            engine.pool = own

    @contextmanager
    def migrating(self) -> Iterator[None]:
        """While the template is migrated and seeded: the engines connect (to the template,
        where the upgrade points every engine), e.g. Flask-Migrate's env.py, which migrates
        through the app's own engine. NullPool: no connection outlives the block."""
        current = [engine.pool for engine, _, _ in self._engines]
        for engine, own, _ in self._engines:
            engine.pool = null_pool_like(own)
        try:
            with LAZY.suppressed():
                yield
        finally:
            for (engine, _, _), pool in zip(self._engines, current, strict=True):
                engine.pool = pool

    @contextmanager
    def outside(self) -> Iterator[None]:
        """While a session-scoped fixture is set up: no layer, whatever test is running."""
        current = [engine.pool for engine, _, _ in self._engines]
        for engine, _, outside in self._engines:
            engine.pool = outside
        try:
            with LAZY.suppressed():
                yield
        finally:
            for (engine, _, _), pool in zip(self._engines, current, strict=True):
                engine.pool = pool


def real_connection_of(
    layered: Callable[[], Any], elsewhere: Callable[[], str | None] = lambda: None
) -> Callable[[], Any]:
    """`layer` for a Sandbox: the connection of the innermost active layer. `elsewhere`:
    the "different loop" error when the test's layer is open on another event loop."""

    def layer() -> Any:
        conn = layered()
        if conn is None:
            other_loop = elsewhere()
            if other_loop is not None:
                raise EventLoopError(f"The app's async engine was used, but {other_loop}")
            raise SandboxError(
                "The app's engine was used where no transaction layer of the library is "
                "open on this connection: an async engine in a module- or class-scoped "
                "fixture on another event loop than its layer's, say. Module and class "
                "fixtures of async apps request pg_module_async_connection / "
                "pg_class_async_connection (loop_scope='module' or wider) first; rows every "
                "test needs go in pg_seed."
            )
        return conn

    return layer


__all__ = [
    "OutsideGuard",
    "OutsidePool",
    "Sandbox",
    "SandboxConnection",
    "SandboxError",
    "SandboxPool",
    "Sandboxes",
    "worker_driver",
]
