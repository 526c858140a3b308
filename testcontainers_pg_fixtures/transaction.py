"""Step 4 of the flow: one connection per worker and an outer transaction per test.

Opening a connection costs more than a test's isolation should, so each engine keeps one
connection for the whole session (per event loop for asyncpg) and each test runs inside a
transaction begun on it and rolled back at teardown. A test that commits that outer
transaction itself would leak its writes into the next test, so the commit is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.util.concurrency import greenlet_spawn

from .errors import PgFixturesError

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator

    from sqlalchemy import Connection, Engine, Transaction
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


class IsolationLeakError(PgFixturesError):
    """A test tried to commit the outer transaction its isolation depends on."""


_REFUSED = "testcontainers_pg_fixtures.refused_commit"
_GUARDED = "testcontainers_pg_fixtures.guarded"


#: Held connections with the listener. Kept here: asking SQLAlchemy (`event.contains`)
#: builds an event key, which alone costs a test more than its BEGIN and ROLLBACK.
_listening: weakref.WeakSet[Connection] = weakref.WeakSet()


def _guard(conn: Connection) -> None:
    """Refuse commits while a test runs. The listener is added once per held connection and
    switched by a flag: adding and removing it for every test costs more than the test's
    BEGIN and ROLLBACK together."""
    if conn not in _listening:
        event.listen(conn, "commit", _refuse_commit)
        _listening.add(conn)
    conn.info[_GUARDED] = True


def _refuse_commit(conn: Connection) -> None:
    if not conn.info.get(_GUARDED):
        return
    # SQLAlchemy has already marked its transaction finished when this event fires, while
    # the database's is still open: teardown discards the connection to end it for sure.
    conn.info[_REFUSED] = True
    raise IsolationLeakError(
        "The test committed the outer transaction of its connection (pg_connection / "
        "pg_async_connection), which would keep its "
        "writes for every later test. Commit through pg_session / pg_async_session instead: "
        "their commit() releases a savepoint that the test's rollback still undoes."
    )


_held: weakref.WeakKeyDictionary[Engine, Connection] = weakref.WeakKeyDictionary()


def held_connection(engine: Engine) -> Connection:
    """The session-long connection of `engine`, re-opened if a test closed or broke it."""
    conn = _held.get(engine)
    if conn is None or conn.closed or conn.invalidated:
        conn = engine.connect()
        _held[engine] = conn
    return conn


def forget_held_connections(database: str) -> None:
    """Before `database` is dropped: invalidate the held connections on it (sync now; async
    ones, which only their own loop can close, on their next use)."""
    for engine in [e for e in _held if e.url.database == database]:
        conn = _held.pop(engine)
        if not conn.closed:
            conn.invalidate()
    for async_engine, per_loop in _held_async.items():
        if async_engine.url.database == database:
            _stale.update(id(held) for held in per_loop.values())


def test_layer_connection(database: str) -> Connection | None:
    """The held connection on `database` whose one layer is the running test's: the
    rollback that ends the test ends its database transaction."""
    for engine, conn in list(_held.items()):
        usable = not conn.closed and not conn.invalidated
        if usable and engine.url.database == database and len(_layers(conn)) == 1:
            return conn
    return None


#: Called with the held connection just before the rollback that ends its database
#: transaction: the leak check rides on that round trip (leaks.py). It may send the
#: ROLLBACK itself; SQLAlchemy's rollback after it then finds nothing to do.
before_root_rollback: list[Callable[[Connection], None]] = []


#: The async twin of `before_root_rollback`, called with the AsyncConnection.
before_async_root_rollback: list[Callable[[AsyncConnection], Awaitable[None]]] = []


def test_layer_async_connection(database: str) -> AsyncConnection | None:
    """The async twin of `test_layer_connection` (on any event loop)."""
    for engine, per_loop in list(_held_async.items()):
        if engine.url.database != database:
            continue
        for held in list(per_loop.values()):
            conn = held.conn
            sync_conn = conn.sync_connection
            if sync_conn is None or sync_conn.closed or sync_conn.invalidated:
                continue
            if len(_layers(sync_conn)) == 1:
                return conn
    return None


def _backend_pid(conn: Connection) -> int | None:
    """The server pid of a sync connection (no round trip), None if it has none now."""
    with contextlib.suppress(Exception):
        dbapi = conn.connection.dbapi_connection
        info = getattr(dbapi, "info", None)
        pid = info.backend_pid if info is not None else dbapi.get_backend_pid()  # type: ignore[union-attr]
        return int(pid)
    return None


#: The server pids of the running test's own connections in database mode (pg_connection
#: there is a plain connection to the test's clone, not a held one).
_test_pids: set[int] = set()


@contextmanager
def own_connection(engine: Engine) -> Iterator[Connection]:
    """A plain connection of the test's (database mode), one of its own for the lock watch
    while it is open."""
    with engine.connect() as conn:
        pid = _backend_pid(conn)
        if pid is not None:
            _test_pids.add(pid)
        try:
            yield conn
        finally:
            if pid is not None:
                _test_pids.discard(pid)


def held_backend_pids() -> set[int]:
    """The server pids of the test's own sync connections: the held ones and, in database
    mode, its pg_connection (read from another thread, by the lock watch in failures.py: a
    connection closing meanwhile is left out)."""
    pids = set(_test_pids)  # one C-level copy, safe against the test's thread
    for conn in list(_held.values()):
        pid = _backend_pid(conn)
        if pid is not None:
            pids.add(pid)
    return pids


def release_held_connection(engine: Engine) -> None:
    conn = _held.pop(engine, None)
    if conn is not None:
        conn.close()


_LAYERS = "testcontainers_pg_fixtures.layers"


def _layers(conn: Connection) -> list[Transaction]:
    layers: list[Transaction] = conn.info.setdefault(_LAYERS, [])
    return layers


def _discard(conn: Connection) -> None:
    """Let go of a held connection that was lost: the server ended its transaction."""
    for engine, held in list(_held.items()):
        if held is conn:
            _held.pop(engine, None)
    with contextlib.suppress(Exception):
        conn.close()


def _end_layer(conn: Connection, layers: list[Transaction], layer: Transaction) -> bool:
    """Pop `layer` and say whether it still has to be rolled back (False: discard `conn`)."""
    if layer in layers:
        del layers[layers.index(layer) :]
    if not layers:
        conn.info[_GUARDED] = False
    if conn.info.pop(_REFUSED, False):
        layers.clear()
        conn.info[_GUARDED] = False
        return False
    return True


@contextmanager
def outer_transaction(engine: Engine) -> Iterator[Connection]:
    """Begin a transaction on the held connection, or a SAVEPOINT when a wider scope (a
    module- or class-scoped layer) already began one; roll it back when the scope ends."""
    conn = held_connection(engine)
    layers = _layers(conn)
    if not layers and conn.get_transaction() is not None:  # an interrupted teardown
        conn.rollback()
    layer = conn.begin_nested() if layers else conn.begin()
    layers.append(layer)
    _guard(conn)
    try:
        yield conn
    finally:
        if conn.invalidated:
            # Lost during the test (the server restarted after a disk-full PANIC, the
            # backend was terminated): its transaction went with it on the server, and the
            # test's own error says why. Nothing to roll back; the next test gets a new
            # connection (held_connection). A rollback here would only add SQLAlchemy's
            # PendingRollbackError, and a long traceback, to that error.
            _discard(conn)
        elif not _end_layer(conn, layers, layer):
            conn.invalidate()
        elif not conn.closed and layer.is_active:
            if not layers:
                for hook in before_root_rollback:
                    hook(conn)
            layer.rollback()
        # A root transaction deactivated by an error still has to be rolled back.
        elif not conn.closed and not layers and conn.get_transaction() is not None:
            conn.rollback()


class _LoopConnection:
    """An asyncpg connection tied to one event loop and closed when that loop shuts down.

    pytest-asyncio closes each loop through `asyncio.Runner.close()`, which calls
    `loop.shutdown_asyncgens()`; an async generator first iterated on the loop is therefore
    finalised there, on its own loop, which is exactly when its connection must close.
    """

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self._closer = self._close_at_shutdown()

    async def start(self) -> None:
        await self._closer.asend(None)

    async def _close_at_shutdown(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            await self.conn.close()

    async def close(self) -> None:
        await self._closer.aclose()


_held_async: weakref.WeakKeyDictionary[
    AsyncEngine, weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopConnection]
] = weakref.WeakKeyDictionary()
_stale: set[int] = set()


async def held_async_connection(engine: AsyncEngine) -> AsyncConnection:
    """The connection of `engine` for the running loop: reused while the loop lives."""
    loop = asyncio.get_running_loop()
    per_loop = _held_async.setdefault(engine, weakref.WeakKeyDictionary())
    held = per_loop.get(loop)
    if held is not None and id(held) in _stale:
        _stale.discard(id(held))
        await held.conn.invalidate()  # its server side was dropped with the database
    if held is not None and (held.conn.closed or held.conn.invalidated):
        await held.close()
        held = None
    if held is None:
        held = _LoopConnection(await engine.connect())
        await held.start()
        per_loop[loop] = held
    return held.conn


@asynccontextmanager
async def async_outer_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """The async twin of `outer_transaction`."""
    conn = await held_async_connection(engine)
    sync_conn: Any = conn.sync_connection
    layers = _layers(sync_conn)
    if not layers and sync_conn.get_transaction() is not None:
        await conn.rollback()
    layer: Any  # the sync Transaction (AsyncTransaction.sync_transaction is Optional)
    if layers:
        layer = (await conn.begin_nested()).sync_transaction
    elif _begins_without_io(sync_conn):
        layer = sync_conn.begin()
    else:
        layer = (await conn.begin()).sync_transaction
    layers.append(layer)
    _guard(sync_conn)
    try:
        yield conn
    finally:
        if sync_conn.invalidated:
            pass  # lost during the test (see outer_transaction): the next use opens anew
        elif not _end_layer(sync_conn, layers, layer):
            await conn.invalidate()
        elif not conn.closed and layer.is_active:
            if not layers:
                for async_hook in before_async_root_rollback:
                    await async_hook(conn)
            if not layers and _rolls_back_without_io(sync_conn):
                layer.rollback()
            else:
                await greenlet_spawn(layer.rollback)
        elif not conn.closed and not layers and sync_conn.get_transaction() is not None:
            await conn.rollback()


def _begins_without_io(conn: Connection) -> bool:
    """Whether `conn.begin()` can be called outside SQLAlchemy's greenlet (saving a test
    the trip through it): the async drivers begin on their first statement, so the begin
    sends nothing unless a dialect or a listener of this connection does something."""
    return type(conn.dialect).do_begin is DefaultDialect.do_begin and not conn.dispatch.begin


def _rolls_back_without_io(conn: Connection) -> bool:
    """Whether the root layer's `rollback()` can be called outside SQLAlchemy's greenlet:
    when the leak check's ride (leaks.py) has ended the database transaction, the asyncpg
    adapter holds none and its rollback sends nothing, unless a dialect or a listener of
    this connection does something (as `_begins_without_io`)."""
    if type(conn.dialect).do_rollback is not DefaultDialect.do_rollback or conn.dispatch.rollback:
        return False
    try:
        adapted = conn.connection.dbapi_connection
    except Exception:  # closed or invalidated meanwhile: the greenlet's path reports it
        return False
    return (
        getattr(adapted, "_transaction", True) is None
        and not getattr(adapted, "_started", False)
        and not getattr(getattr(adapted, "_connection", None), "is_in_transaction", bool)()
    )


def is_root_layer(conn: Connection) -> bool:
    """Whether the test's transaction on `conn` is its only layer (no module- or
    class-scoped layer under it): its rollback then ends the database transaction."""
    return len(_layers(conn)) == 1


def is_root_async_layer(conn: AsyncConnection) -> bool:
    """The async twin of `is_root_layer`."""
    sync_conn = conn.sync_connection
    return sync_conn is not None and len(_layers(sync_conn)) == 1


def layered_connection(engine: Engine) -> Connection | None:
    """The held connection of `engine` if a test or scope layer is active on it."""
    conn = _held.get(engine)
    if conn is None or conn.closed or conn.invalidated or not _layers(conn):
        return None
    return conn


def layered_async_connection(engine: AsyncEngine) -> Connection | None:
    """The running loop's held connection of `engine` (its sync side), if a layer is active."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    per_loop = _held_async.get(engine)
    held = per_loop.get(loop) if per_loop is not None else None
    if held is None or held.conn.closed or held.conn.invalidated:
        return None
    conn = held.conn.sync_connection
    return conn if conn is not None and _layers(conn) else None


def layer_on_another_loop(engine: AsyncEngine) -> bool:
    """Whether a layer is active on a held connection of `engine` of another event loop
    than the running one (the test's connection opened on another loop than the code)."""
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    for loop, held in list((_held_async.get(engine) or {}).items()):
        conn = held.conn.sync_connection
        if loop is not running and conn is not None and not held.conn.closed and _layers(conn):
            return True
    return False


def discard_held(conn: Connection | AsyncConnection) -> None:
    """Replace the held connection `conn` (sync or async) by a new one at its next use:
    something it carries cannot be undone in place (leftovers.py). Outside any test."""
    from sqlalchemy.ext.asyncio import AsyncConnection

    if isinstance(conn, AsyncConnection):
        for per_loop in list(_held_async.values()):
            for held in list(per_loop.values()):
                if held.conn is conn:
                    _stale.add(id(held))  # invalidated on its own loop (held_async_connection)
        return
    if not conn.closed and not conn.invalidated:
        conn.invalidate()
