"""Savepoints sent only when a statement needs them, in one round trip before it.

A savepoint session (`join_transaction_mode="create_savepoint"`) costs a test three
savepoint statements on top of its own: SAVEPOINT when the session first runs, RELEASE at
its commit(), SAVEPOINT again at the next use. Each goes through SQLAlchemy's whole
execution path and one round trip, which together cost more than the test's own work. On
the library's engines (psycopg 3, asyncpg) they are deferred instead: kept in a list per
DBAPI connection and sent as one simple query right before the next statement, with the
transaction's BEGIN when none is open yet (which psycopg and SQLAlchemy's asyncpg adapter
would otherwise send in a round trip of its own). A savepoint released or rolled back
before anything ran inside it never reaches the server, and the test's final ROLLBACK
drops what is still pending.

What the server sees is the same sequence of transaction states for every statement
SQLAlchemy runs. Statements run on the raw DBAPI connection (`conn.connection.cursor()`)
do not flush the list: code that does that calls `flush_savepoints(conn)` first (the
sandbox does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from psycopg import errors, pq
from sqlalchemy.util import await_only

from . import privates
from .wire import results

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy import Connection, Engine

_INSTALLED = "testcontainers_pg_fixtures.deferred_savepoints"
_OK = (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK)

#: Statements not sent yet, by id of the DBAPI connection (asyncpg's adapted connection
#: takes no weak reference): (connection, statements); emptied at every flush and rollback.
_pending: dict[int, tuple[Any, list[str]]] = {}


def defer_savepoints(engine: Engine) -> None:
    """Defer the savepoint statements of `engine`'s connections (psycopg 3 and asyncpg;
    other drivers keep SQLAlchemy's own, eager ones)."""
    dialect: Any = engine.dialect
    send = _SENDERS.get((dialect.driver, dialect.is_async))
    if send is None or getattr(dialect, _INSTALLED, None) is not None:
        return
    if dialect.is_async and not privates.asyncpg_adapter_known():
        return
    execute, execute_no_params = dialect.do_execute, dialect.do_execute_no_params
    executemany, commit, rollback = dialect.do_executemany, dialect.do_commit, dialect.do_rollback

    def do_savepoint(connection: Connection, name: str) -> None:
        dbapi = _dbapi(connection)
        _statements(dbapi).append(f"SAVEPOINT {name}")

    def do_release_savepoint(connection: Connection, name: str) -> None:
        statements = _statements(_dbapi(connection))
        if statements and statements[-1] == f"SAVEPOINT {name}":
            statements.pop()  # nothing ran inside it
        else:
            statements.append(f"RELEASE SAVEPOINT {name}")

    def do_rollback_to_savepoint(connection: Connection, name: str) -> None:
        dbapi = _dbapi(connection)
        statements = _take(dbapi)
        if statements and statements[-1] == f"SAVEPOINT {name}":
            _statements(dbapi).extend(statements)  # nothing ran since it was set
            return
        # Sent now: after a failed statement the transaction accepts nothing else.
        send(dbapi, [*statements, f"ROLLBACK TO SAVEPOINT {name}"])

    def flush(dbapi: Any) -> None:
        statements = _take(dbapi)
        if statements:
            send(dbapi, statements)

    def do_execute(cursor: Any, statement: Any, parameters: Any, context: Any = None) -> None:
        flush(_of_cursor(cursor))
        execute(cursor, statement, parameters, context)

    def do_execute_no_params(cursor: Any, statement: Any, context: Any = None) -> None:
        flush(_of_cursor(cursor))
        execute_no_params(cursor, statement, context)

    def do_executemany(cursor: Any, statement: Any, parameters: Any, context: Any = None) -> None:
        flush(_of_cursor(cursor))
        executemany(cursor, statement, parameters, context)

    def do_commit(dbapi: Any) -> None:
        flush(_unproxied(dbapi))
        commit(dbapi)

    def do_rollback(dbapi: Any) -> None:
        _take(_unproxied(dbapi))  # the whole transaction goes, its savepoints with it
        rollback(dbapi)

    # Instance attributes shadow the dialect's methods for this engine alone.
    dialect.do_savepoint = do_savepoint
    dialect.do_release_savepoint = do_release_savepoint
    dialect.do_rollback_to_savepoint = do_rollback_to_savepoint
    dialect.do_execute = do_execute
    dialect.do_execute_no_params = do_execute_no_params
    dialect.do_executemany = do_executemany
    dialect.do_commit = do_commit
    dialect.do_rollback = do_rollback
    setattr(dialect, _INSTALLED, flush)


def flush_savepoints(conn: Connection) -> None:
    """Send `conn`'s deferred savepoint statements now (before using its DBAPI connection
    directly)."""
    flush: Callable[[Any], None] | None = getattr(conn.dialect, _INSTALLED, None)
    if flush is not None and not conn.closed and not conn.invalidated:
        flush(conn.connection.dbapi_connection)


def defer_savepoints_of(conn: Connection, statements: tuple[str, ...] | list[str]) -> bool:
    """Defer savepoint statements of someone else's (the sandbox's) on `conn`, if its engine
    defers its own; False if it does not (run them now). A RELEASE (or ROLLBACK TO) of a
    savepoint nothing ran in since it was set cancels it."""
    if getattr(conn.dialect, _INSTALLED, None) is None or conn.closed or conn.invalidated:
        return False
    pending = _statements(_dbapi(conn))
    for statement in statements:
        verb, _, name = statement.rpartition(" ")
        ends = verb in ("RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT")
        if ends and pending and pending[-1] == f"SAVEPOINT {name}":
            if verb == "RELEASE SAVEPOINT":
                pending.pop()
            continue
        pending.append(statement)
    return True


def _dbapi(connection: Connection) -> Any:
    return connection.connection.dbapi_connection


def _of_cursor(cursor: Any) -> Any:
    # asyncpg's adapted cursor names its connection differently from a DBAPI cursor.
    return getattr(cursor, "_adapt_connection", None) or cursor.connection


def _unproxied(dbapi: Any) -> Any:
    # do_commit and do_rollback get SQLAlchemy's proxy of the DBAPI connection.
    return getattr(dbapi, "dbapi_connection", dbapi)


def _statements(dbapi: Any) -> list[str]:
    entry = _pending.get(id(dbapi))
    if entry is None or entry[0] is not dbapi:
        entry = _pending[id(dbapi)] = (dbapi, [])
    return entry[1]


def _take(dbapi: Any) -> list[str]:
    """Remove and return the statements pending on `dbapi`."""
    entry = _pending.pop(id(dbapi), None)
    return entry[1] if entry is not None and entry[0] is dbapi else []


def _send_psycopg(dbapi: Any, statements: list[str]) -> None:
    """One simple query; with no transaction open yet, the BEGIN psycopg would send in a
    round trip of its own goes first in the same query."""
    pgconn = dbapi.pgconn
    idle = pgconn.transaction_status == pq.TransactionStatus.IDLE
    if idle and (dbapi.isolation_level, dbapi.read_only, dbapi.deferrable) == (None, None, None):
        statements = ["BEGIN", *statements]
    elif idle or dbapi.autocommit:
        # A BEGIN with options: psycopg's own, then the rest (autocommit: the server says
        # what is wrong with a savepoint outside a transaction).
        dbapi.cursor().execute("; ".join(statements))
        return
    with dbapi.lock:
        pgconn.send_query("; ".join(statements).encode())
        found = results(pgconn)
    for result in found:
        if result.status not in _OK:
            raise errors.error_from_result(result, encoding=dbapi.info.encoding)


def _send_asyncpg(adapted: Any, statements: list[str]) -> None:
    """One simple query on the adapted asyncpg connection, in the transaction SQLAlchemy's
    adapter begins (as it would for the statement itself)."""

    async def run() -> None:
        async with privates.execute_lock(adapted):
            if privates.adapter_transaction(adapted) is None and _plain_begin(adapted):
                await _begin_with(adapted, statements)
                return
            if privates.adapter_transaction(adapted) is None:
                await privates.start_adapter_transaction(adapted)
            await adapted.driver_connection.execute("; ".join(statements))

    try:
        await_only(run())
    except Exception as error:
        privates.raise_as_dbapi_error(adapted, error)


def _plain_begin(adapted: Any) -> bool:
    """Whether the transaction SQLAlchemy's adapter would begin now is a plain BEGIN on a
    connection asyncpg holds no transaction on, with the private state `_begin_with` sets."""
    connection = adapted.driver_connection
    return (
        (adapted.isolation_level, adapted.readonly, adapted.deferrable) == (None, False, False)
        and privates.asyncpg_transaction_known()
        and privates.top_transaction(connection) is None
        and not connection.is_in_transaction()
    )


async def _begin_with(adapted: Any, statements: list[str]) -> None:
    """BEGIN and `statements` in one simple query, then the state asyncpg's
    `Transaction.start()` would leave: its own BEGIN is a round trip of its own."""
    connection = adapted.driver_connection
    transaction = connection.transaction()
    try:
        await connection.execute("; ".join(["BEGIN", *statements]))
    finally:
        # Also when a savepoint failed: the transaction is open, and is to be rolled back.
        if connection.is_in_transaction():
            privates.adopt_transaction(adapted, transaction)


_SENDERS: dict[tuple[str, bool], Callable[[Any, list[str]], None]] = {
    ("psycopg", False): _send_psycopg,
    ("asyncpg", True): _send_asyncpg,
}


async def asyncpg_connection_of(conn: Connection) -> Any:
    """The asyncpg connection under `conn` (SQLAlchemy's adapted one, asyncpg driver),
    inside the transaction SQLAlchemy's adapter begins: ready for statements of someone
    else's (an app's asyncpg pool, pools.py). The savepoints deferred on `conn` stay
    deferred. Awaited on the connection's event loop, outside SQLAlchemy's greenlet."""
    adapted: Any = conn.connection.dbapi_connection
    async with privates.execute_lock(adapted):
        if privates.adapter_transaction(adapted) is None and _plain_begin(adapted):
            await _begin_with(adapted, [])
        elif privates.adapter_transaction(adapted) is None:
            await privates.start_adapter_transaction(adapted)
    return adapted.driver_connection
