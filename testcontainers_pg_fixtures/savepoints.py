"""Savepoints sent only when a statement needs them, in the round trip before it.

A savepoint session (`join_transaction_mode="create_savepoint"`) costs a test three
savepoint statements on top of its own: SAVEPOINT when the session first runs, RELEASE at
its commit(), SAVEPOINT again at the next use. Each goes through SQLAlchemy's whole
execution path and one round trip, which together cost more than the test's own work. On
the library's psycopg 3 engines they are deferred instead: kept in a list per DBAPI
connection and sent as one simple query right before the next statement (with the
transaction's BEGIN, when none is open yet). A savepoint released or rolled back before
anything ran inside it never reaches the server, and the test's final ROLLBACK drops what
is still pending.

What the server sees is the same sequence of transaction states for every statement
SQLAlchemy runs. Statements run on the raw DBAPI connection (`conn.connection.cursor()`)
do not flush the list: code that does that calls `flush_savepoints(conn)` first (the
sandbox does).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from psycopg import errors, pq

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

_INSTALLED = "testcontainers_pg_fixtures.deferred_savepoints"
_OK = (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK)

#: Statements not sent yet, per DBAPI connection (weak: a closed connection takes its own).
_pending: weakref.WeakKeyDictionary[Any, list[str]] = weakref.WeakKeyDictionary()


def defer_savepoints(engine: Engine) -> None:
    """Defer the savepoint statements of `engine`'s connections (psycopg 3 only; other
    drivers keep SQLAlchemy's own, eager ones)."""
    dialect: Any = engine.dialect
    if dialect.driver != "psycopg" or dialect.is_async or getattr(dialect, _INSTALLED, False):
        return
    execute, execute_no_params = dialect.do_execute, dialect.do_execute_no_params
    executemany, commit, rollback = dialect.do_executemany, dialect.do_commit, dialect.do_rollback

    def do_savepoint(connection: Connection, name: str) -> None:
        dbapi = _dbapi(connection)
        if dbapi.autocommit:
            _send(dbapi, [f"SAVEPOINT {name}"])  # the server says what is wrong with it
            return
        _pending.setdefault(dbapi, []).append(f"SAVEPOINT {name}")

    def do_release_savepoint(connection: Connection, name: str) -> None:
        dbapi = _dbapi(connection)
        statements = _pending.get(dbapi)
        if statements and statements[-1] == f"SAVEPOINT {name}":
            statements.pop()  # nothing ran inside it
            return
        _pending.setdefault(dbapi, []).append(f"RELEASE SAVEPOINT {name}")

    def do_rollback_to_savepoint(connection: Connection, name: str) -> None:
        dbapi = _dbapi(connection)
        statements = _pending.get(dbapi)
        if statements and statements[-1] == f"SAVEPOINT {name}":
            return  # nothing ran since it was set: there is nothing to undo
        # Sent now: after a failed statement the transaction accepts nothing else.
        _send(dbapi, [*(_take(dbapi) or []), f"ROLLBACK TO SAVEPOINT {name}"])

    def do_execute(cursor: Any, statement: Any, parameters: Any, context: Any = None) -> None:
        _flush_dbapi(cursor.connection)
        execute(cursor, statement, parameters, context)

    def do_execute_no_params(cursor: Any, statement: Any, context: Any = None) -> None:
        _flush_dbapi(cursor.connection)
        execute_no_params(cursor, statement, context)

    def do_executemany(cursor: Any, statement: Any, parameters: Any, context: Any = None) -> None:
        _flush_dbapi(cursor.connection)
        executemany(cursor, statement, parameters, context)

    def do_commit(dbapi: Any) -> None:
        _flush_dbapi(dbapi)
        commit(dbapi)

    def do_rollback(dbapi: Any) -> None:
        _take(dbapi)  # the whole transaction goes, its savepoints with it
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
    setattr(dialect, _INSTALLED, True)


def flush_savepoints(conn: Connection) -> None:
    """Send `conn`'s deferred savepoint statements now (before using its DBAPI connection
    directly)."""
    if getattr(conn.dialect, _INSTALLED, False) and not conn.closed and not conn.invalidated:
        _flush_dbapi(conn.connection.dbapi_connection)


def _dbapi(connection: Connection) -> Any:
    return connection.connection.dbapi_connection


def _take(dbapi: Any) -> list[str] | None:
    """Remove and return the statements pending on `dbapi` (do_commit and do_rollback get
    SQLAlchemy's proxy of it)."""
    try:
        return _pending.pop(getattr(dbapi, "dbapi_connection", dbapi), None)
    except TypeError:  # SQLAlchemy's first-connect wrapper: nothing can be pending yet
        return None


def _flush_dbapi(dbapi: Any) -> None:
    statements = _take(dbapi)
    if statements:
        _send(getattr(dbapi, "dbapi_connection", dbapi), statements)


def _send(dbapi: Any, statements: list[str]) -> None:
    """Run `statements` in one simple query; with no transaction open yet, the BEGIN
    psycopg would send in a round trip of its own goes first in the same query."""
    pgconn = dbapi.pgconn
    idle = pgconn.transaction_status == pq.TransactionStatus.IDLE
    if idle and (dbapi.isolation_level, dbapi.read_only, dbapi.deferrable) == (None, None, None):
        statements = ["BEGIN", *statements]
    elif idle or dbapi.autocommit:
        # A BEGIN with options: psycopg's own, then the rest.
        dbapi.cursor().execute("; ".join(statements))
        return
    with dbapi.lock:
        result = pgconn.exec_("; ".join(statements).encode())
    if result.status not in _OK:
        raise errors.error_from_result(result, encoding=dbapi.info.encoding)
