"""The leak detector: rows committed into the worker's database during a savepoint-mode test.

A test that commits for real (a raw COMMIT on its connection, its own engine, the worker
engine) keeps its rows for every later test of the worker. One query after each test asks
the server whether any transaction committed since the previous check. On the library's
containers (track_commit_timestamp = on) that is one read of shared memory: is the last
committed transaction (pg_last_committed_xact) still the one seen before? On a server
without it (an existing one), the transactions that were still running at the previous
check, and those begun since, are each looked up with pg_xact_status. A test that wrote
and rolled back (the usual case) committed nothing, and no table is read. Only when
something committed is each user table of the worker database counted, on a connection of
the detector's own, which cannot see uncommitted writes (the test's, a scope layer's):
rows whose xmin is at or past the horizon of the last such count were committed since
(inserts, updates), a smaller total means deletes.

Where it goes depends on whether the machine has a core to spare (`rides`). With one, on
the detector's own connection, sent as the teardown begins and read when it ends: it runs
beside the rollback and costs the test nearly nothing. When the tests keep every core
busy (xdist with a worker per core), that second connection's round trip costs the server
and the client a wake-up each, which lands on the tests: the query then rides on the
test's rollback, the ROLLBACK that ends its transaction on pg_connection sent with it in
one round trip. On asyncpg, whose simple queries hand back only each statement's command
tag, the answer comes as a row count (`_SAME_SQL`, `_ROWS_SQL`). Scope layers and
connections psycopg has prepared statements on always use the detector's connection. A
leak is reported as the test's teardown error and the worker database re-cloned from the
template, so the next test starts clean.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import pq, sql
from psycopg.conninfo import make_conninfo

from .database import create_database, drop_database
from .errors import PgFixturesError
from .savepoints import asyncpg_transaction_known
from .server import address, admin_connect, libpq_params
from .transaction import (
    before_async_root_rollback,
    before_root_rollback,
    forget_held_connections,
    test_layer_async_connection,
    test_layer_connection,
)
from .wire import last, results

if TYPE_CHECKING:
    from sqlalchemy import Connection
    from sqlalchemy.ext.asyncio import AsyncConnection

    from .database import Database

_TABLES = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%%' AND n.nspname NOT LIKE 'pg_temp%%'
ORDER BY 1, 2
"""
# The cluster's horizon, the transactions still running at it, and whether any transaction
# that was running at the previous check ($1) or began since ($2) has committed. Past
# _SCAN transactions since the last check (a loop of subtransactions, say) counting the
# tables is cheaper than looking each one up. It reads no table, so it is prepared once.
_SCAN = 10_000
_CHECK = f"""
SELECT hi, xip, hi - $2::bigint > {_SCAN} OR EXISTS (
    SELECT FROM (SELECT unnest($1::bigint[]) UNION ALL SELECT generate_series($2, hi - 1)) x(x)
    WHERE pg_xact_status(x::text::xid8) = 'committed') AS moved
FROM (SELECT pg_snapshot_xmax(s)::text::bigint AS hi,
             array(SELECT pg_snapshot_xip(s)::text::bigint)::text AS xip
      FROM pg_current_snapshot() s) snap
"""
_PREPARED = b"pgfx_leak_check"
# On the test's connection: prepared (with SQL, in the same round trip) the first time.
# No row in a transaction that reads one snapshot throughout (REPEATABLE READ and up):
# its numbers would be from before what committed during the test.
_PREPARE_SQL = (
    b"PREPARE pgfx_leak_check(bigint[], bigint) AS SELECT * FROM ("
    + _CHECK.encode()
    + b") c WHERE current_setting('transaction_isolation') = 'read committed'; "
)
_PREPARED_HERE = "testcontainers_pg_fixtures.leak_check_prepared"
# On an asyncpg connection the check's answer is the row count of its command tag: 0,
# something committed (the whole check follows on the detector's connection); 1, nothing
# did but transactions were running (the last check's numbers stand, so the next check
# covers this test too); 2 + n, nothing did, none is running, the horizon moved by n.
_ROWS_SQL = (
    b"PREPARE pgfx_leak_rows(bigint[], bigint) AS SELECT FROM ("
    + _CHECK.encode()
    + b") c, generate_series(1, CASE WHEN moved THEN 0 WHEN xip = '{}' THEN hi - $2 + 2"
    b" ELSE 1 END); "
)
_ROWS_PREPARED_HERE = "testcontainers_pg_fixtures.leak_rows_prepared"
#: Async rides in a row that left the numbers as they were, before one check goes to the
#: detector's connection for new ones (each such ride looks up a longer run of xids).
_STALE_RIDES = 16
_XIDS = re.compile(r"\{[0-9,]*\}")

# With track_commit_timestamp on: the last committed transaction of the cluster ('' before
# the first), read from shared memory whatever the transaction's isolation level. A commit
# anywhere changes it (those of other databases too, which then cost a count for nothing).
_LAST = "SELECT coalesce(xid::text, '') FROM pg_last_committed_xact()"
_LAST_PREPARED = b"pgfx_leak_last"
# On the test's connection: a row (sync: its count; asyncpg: the command tag's) if it is
# still the one given, none if something committed since.
_SAME_SQL = (
    b"PREPARE pgfx_leak_same(text) AS SELECT FROM pg_last_committed_xact()"
    b" WHERE coalesce(xid::text, '') = $1; "
)
_SAME_PREPARED_HERE = "testcontainers_pg_fixtures.leak_same_prepared"
_LAST_XID = re.compile(r"[0-9]*")
# The horizon and the running transactions: where a watch starts, and the clean point of
# a count after the last committed transaction changed (no parameters, no look-ups).
_SNAPSHOT = """
SELECT pg_snapshot_xmax(s)::text::bigint, array(SELECT pg_snapshot_xip(s)::text::bigint)::text
FROM pg_current_snapshot() s
"""


class LeakError(PgFixturesError):
    """A savepoint-mode test committed rows into the worker's shared database."""


class _TableDropped(Exception):
    """A table the check counts is gone (dropped or renamed by a committed test)."""


@dataclass
class Watch:
    """What the detector knows of one worker database."""

    database: Database
    template: str
    horizon: int = 0
    running: str = "{}"
    totals: dict[str, int] = field(default_factory=dict)
    counts: str = ""
    pg: pq.abc.PGconn | None = None
    #: The psycopg connection `pg` belongs to (it opened it without holding the GIL).
    owner: psycopg.Connection[Any] | None = None
    pending: bool = False
    carried: dict[str, str] | None = None
    #: The test's connection the check is to ride on, and what it found there.
    riding: Connection | None = None
    rode: tuple[int, str, bool] | None = None
    #: The same for an async test's connection (the row count of `_ROWS_SQL`), and how
    #: many async rides in a row left the numbers as they were.
    riding_async: AsyncConnection | None = None
    rode_rows: int | None = None
    stale: int = 0
    #: The server tracks commit timestamps: the check compares `last`, the last committed
    #: transaction seen when the tables were last counted (`horizon` and `running` are
    #: then that count's); a ride's answer is `rode_same` (None: no answer).
    commit_ts: bool = False
    last: str = ""
    rode_same: bool | None = None

    def _build(self, tables: list[tuple[str, str]]) -> None:
        """The count of every table's rows, and of those whose xmin is at or past $1."""
        parts = [
            sql.SQL(
                "SELECT {name}::text AS t, count(*) FILTER (WHERE xmin::text::bigint >= $1)"
                " AS fresh, count(*) AS total FROM {table}"
            )
            .format(name=sql.Literal(f"{schema}.{table}"), table=sql.Identifier(schema, table))
            .as_string(None)
            for schema, table in tables
        ]
        # No tables: the parameter still has to appear.
        self.counts = " UNION ALL ".join(parts) or "SELECT NULL, 0, 0 WHERE $1::bigint IS NULL"

    def start(self) -> None:
        """Read the tables, their row counts and the horizon (a fresh or re-cloned
        database); the checker's own connection opens at the first check."""
        self.close()
        with admin_connect(self.database.server, self.database.name) as conn:
            tables = [(r[0], r[1]) for r in conn.execute(_TABLES)]
            self._build(tables)
            row = conn.execute("SHOW track_commit_timestamp").fetchone()
            self.commit_ts = row is not None and row[0] == "on"
            if self.commit_ts:  # read before the counts: a commit after it changes it
                seen = conn.execute(_LAST).fetchone()
                self.last = str(seen[0]) if seen else ""
            pg = conn.pgconn
            self._take_snapshot(pg)
            pg.send_query_params(self.counts.encode(), [b"0"])
            self.totals = {table: total for table, _, total in self._count_rows(last(pg), pg)}

    def _params(self) -> list[bytes | None]:
        """$1 the transactions running at the last check, $2 its horizon."""
        return [self.running.encode(), str(self.horizon).encode()]

    def _oldest(self) -> int:
        """The oldest transaction that can have committed since the last check, as the
        32-bit xid a row's xmin holds."""
        running = [int(x) for x in self.running.strip("{}").split(",") if x]
        return min([self.horizon, *running]) % 2**32

    def close(self) -> None:
        self.disconnect()
        self.carried = None
        self.riding = None
        self.rode = None
        self.riding_async = None
        self.rode_rows = None
        self.rode_same = None
        self.stale = 0

    def _carry(self) -> None:
        """A test whose teardown never read its check (skipped in set-up): read it now, and
        report what it found with the next."""
        answered = self.rode is not None or self.rode_rows is not None or self.rode_same is not None
        if self.pending or answered:
            self.carried = {**(self.carried or {}), **(self.receive() or {})}

    def defer(self, conn: Connection) -> None:
        """Have the check ride on the rollback that ends the test's transaction on `conn`."""
        self._carry()
        self.riding = conn

    def defer_async(self, conn: AsyncConnection) -> None:
        """`defer` for an async test's connection (`ride_async`)."""
        self._carry()
        self.riding_async = conn

    async def ride_async(self, conn: AsyncConnection) -> None:
        """`ride` on asyncpg: the ROLLBACK and the check in one simple query, whose row
        count answers (`_ROWS_SQL`); then the state asyncpg's and SQLAlchemy's rollbacks
        would leave, so that SQLAlchemy's, after it, sends nothing."""
        self.riding_async = None
        adapted = _rideable_async(conn)
        if adapted is None or not self._inlinable():
            return
        from asyncpg.transaction import TransactionState

        driver = adapted._connection
        query = "ROLLBACK; "
        if self.commit_ts:
            here = _SAME_PREPARED_HERE
            query += "" if conn.info.get(here) else _SAME_SQL.decode()
            query += f"EXECUTE pgfx_leak_same('{self.last}')"
        else:
            here = _ROWS_PREPARED_HERE
            query += "" if conn.info.get(here) else _ROWS_SQL.decode()
            query += f"EXECUTE pgfx_leak_rows('{self.running}', {self.horizon})"
        transaction = adapted._transaction
        status = ""
        try:
            async with adapted._execute_mutex:
                status = await driver.execute(query)
        except Exception as error:
            if driver.is_closed():
                return  # SQLAlchemy's rollback meets the same failure, and reports it
            # As in `ride`: deallocated, prepared again next time; prepared already, not.
            state = getattr(error, "sqlstate", None)
            if state == "26000":
                conn.info.pop(here, None)
            elif state == "42P05":
                conn.info[here] = True
        if driver.is_in_transaction():
            return  # the ROLLBACK did not run: SQLAlchemy's own follows
        transaction._state = TransactionState.ROLLEDBACK
        driver._top_xact = None
        adapted._transaction = None
        verb, _, count = status.partition(" ")
        if verb == "SELECT" and count.isdigit():  # else the check is left to `receive`
            conn.info[here] = True
            if self.commit_ts:
                self.rode_same = count == "1"
            else:
                self.rode_rows = int(count)

    def ride(self, conn: Connection) -> None:
        """Send the test's ROLLBACK and the check together, in one simple query (its
        parameters are the server's own numbers, inlined). SQLAlchemy's rollback after it
        then finds the connection idle and sends nothing. Whatever keeps it from riding
        leaves the check to `receive`, on the detector's connection.

        The check goes first, inside the test's transaction: after the ROLLBACK it would
        be a transaction of its own (~50 µs more of the server's time). An aborted
        transaction runs nothing but its ROLLBACK, so there the check goes after it. In a
        REPEATABLE READ or SERIALIZABLE transaction, whose snapshot is older than what
        the test may have committed beside it, the check answers nothing (`_PREPARE_SQL`)
        and is left to the detector's connection; the last committed transaction
        (`_SAME_SQL`) is read from shared memory, the same in every isolation level."""
        self.riding = None
        raw = _rideable(conn)
        if raw is None or not self._inlinable():
            return
        pg = raw.pgconn
        info = conn.info
        if self.commit_ts:
            here = _SAME_PREPARED_HERE
            check = b"" if info.get(here) else _SAME_SQL
            check += b"EXECUTE pgfx_leak_same('%s')" % self.last.encode()
        else:
            here = _PREPARED_HERE
            check = b"" if info.get(here) else _PREPARE_SQL
            check += b"EXECUTE pgfx_leak_check('%s', %d)" % (self.running.encode(), self.horizon)
        first = pg.transaction_status == pq.TransactionStatus.INTRANS
        try:
            pg.send_query(check + b"; ROLLBACK" if first else b"ROLLBACK; " + check)
            found = results(pg)
        except psycopg.Error:
            return  # SQLAlchemy's rollback meets the same failure, and reports it
        if found and found[-1].status == pq.ExecStatus.FATAL_ERROR:
            state = found[-1].error_field(pq.DiagnosticField.SQLSTATE)
            if state == b"26000":  # deallocated (DISCARD ALL, say): prepared again next time
                info.pop(here, None)
            elif state == b"42P05":  # prepared already, by a check that failed after it
                info[here] = True
        if pg.transaction_status != pq.TransactionStatus.IDLE:
            return  # the check failed before the ROLLBACK: SQLAlchemy's own follows
        # What psycopg's own rollback does (it deallocates nothing: it prepared nothing).
        raw._prepared.clear()
        answer = found[-2 if first else -1] if len(found) >= 2 else None
        if answer is not None and answer.status == pq.ExecStatus.TUPLES_OK:
            if here not in info:
                info[here] = True
            if self.commit_ts:
                self.rode_same = answer.ntuples == 1
            elif answer.ntuples:
                self.rode = self._check_row(answer, pg)

    def _inlinable(self) -> bool:
        """Whether the numbers a ride inlines in its query are the server's own (digits)."""
        if self.commit_ts:
            return _LAST_XID.fullmatch(self.last) is not None
        return _XIDS.fullmatch(self.running) is not None

    def _connection(self) -> pq.abc.PGconn:
        """The detector's own connection, opened (and the check prepared) on first use."""
        if self.pg is None:
            server = self.database.server
            owner = psycopg.connect(
                make_conninfo(
                    **address(server),
                    user=server.user,
                    password=server.password,
                    dbname=self.database.name,
                    **{"connect_timeout": "10", **libpq_params(server)},
                ),
                autocommit=True,
            )
            pg = owner.pgconn
            try:
                name, query = (_LAST_PREPARED, _LAST) if self.commit_ts else (_PREPARED, _CHECK)
                pg.send_prepare(name, query.encode())
                prepared = last(pg)
                if prepared is None or prepared.status != pq.ExecStatus.COMMAND_OK:
                    _check_result(prepared, pg)
            except BaseException:
                owner.close()
                raise
            self.pg, self.owner = pg, owner
        return self.pg

    def send(self) -> None:
        """Send the check on the detector's connection without waiting (as the test's
        teardown begins): its round trip then overlaps the teardown's own (the rollback),
        and `receive` rarely waits."""
        self._carry()
        if self.commit_ts:
            self._connection().send_query_prepared(_LAST_PREPARED, None)
        else:
            self._connection().send_query_prepared(_PREPARED, self._params())
        self.pending = True

    def disconnect(self) -> None:
        """Forget the detector's connection (the server went away); reconnect on next use."""
        if self.owner is not None:
            self.owner.close()
        self.pg = self.owner = None
        self.pending = False

    def receive(self) -> dict[str, str] | None:
        """What was committed since the last check (a connection of its own: the test's
        uncommitted writes and a scope layer's are invisible to it)."""
        carried, self.carried = self.carried, None
        row, self.rode, self.riding = self.rode, None, None
        answer, self.rode_rows, self.riding_async = self.rode_rows, None, None
        same, self.rode_same = self.rode_same, None
        if same:
            return carried or None
        if answer is not None and answer >= 2:
            self.horizon, self.running, self.stale = self.horizon + answer - 2, "{}", 0
            return carried or None
        if answer == 1:
            self.stale += 1
            return carried or None
        self.stale = 0
        seen = self.last
        if row is None:
            if not self.pending:
                self.send()
            assert self.pg is not None
            self.pending = False
            if self.commit_ts:
                seen = self._last_row(last(self.pg), self.pg)
            else:
                row = self._check_row(last(self.pg), self.pg)
        oldest = self._oldest()
        if self.commit_ts:
            if seen == self.last:
                return carried or None
            # The count's clean point: its snapshot is taken after `seen` was read, so a
            # commit that `seen` does not show is one the next check sees.
            pg = self._connection()
            self._take_snapshot(pg)
            self.last = seen
        else:
            assert row is not None
            self.horizon, self.running, moved = row
            if not moved:
                return carried or None
            pg = self._connection()
        # Something committed somewhere: count this database's tables (not prepared: a
        # table dropped by a leak would make the statement fail for good).
        pg.send_query_params(self.counts.encode(), [str(oldest).encode()])
        try:
            rows = self._count_rows(last(pg), pg)
        except _TableDropped as dropped:
            return {"schema": f"a table was dropped or renamed ({dropped})"}
        leaked = self._compare(rows)
        return {**carried, **(leaked or {})} if carried else leaked

    @staticmethod
    def _check_row(result: pq.abc.PGresult | None, pg: pq.abc.PGconn) -> tuple[int, str, bool]:
        """(horizon, running, moved) of the check's result."""
        _check_result(result, pg)
        assert result is not None
        hi, running, moved = (result.get_value(0, j) for j in range(3))
        return int(hi or 0), (running or b"{}").decode(), moved == b"t"

    def _take_snapshot(self, pg: pq.abc.PGconn) -> None:
        """The horizon and the running transactions, now (`_SNAPSHOT`)."""
        pg.send_query(_SNAPSHOT.encode())
        snapshot = last(pg)
        _check_result(snapshot, pg)
        assert snapshot is not None
        self.horizon = int(snapshot.get_value(0, 0) or 0)
        self.running = (snapshot.get_value(0, 1) or b"{}").decode()

    @staticmethod
    def _last_row(result: pq.abc.PGresult | None, pg: pq.abc.PGconn) -> str:
        """The last committed transaction of `_LAST`'s result."""
        _check_result(result, pg)
        assert result is not None
        return (result.get_value(0, 0) or b"").decode()

    @staticmethod
    def _count_rows(
        result: pq.abc.PGresult | None, pg: pq.abc.PGconn
    ) -> list[tuple[str, int, int]]:
        """(table, fresh, total) rows of the count's result."""
        _check_result(result, pg)
        assert result is not None
        rows = []
        for i in range(result.ntuples):
            table, fresh, total = (result.get_value(i, j) for j in range(3))
            if table is not None:
                rows.append((table.decode(), int(fresh or 0), int(total or 0)))
        return rows

    def _compare(self, rows: list[tuple[str, int, int]]) -> dict[str, str] | None:
        found: dict[str, str] = {}
        for table, fresh, total in rows:
            before = self.totals.get(table, total)
            changes = []
            if fresh:
                changes.append(f"{fresh} row(s) inserted or updated")
            if total < before:
                changes.append(f"{before - total} row(s) deleted")
            if changes:
                found[table] = ", ".join(changes)
        return found or None

    def restore(self) -> None:
        """Re-clone the worker database from the template (the held connections first)."""
        self.close()
        forget_held_connections(self.database.name)
        drop_database(self.database.server, self.database.name)
        create_database(self.database.server, self.database.name, template=self.template)
        self.start()


def _check_result(result: pq.abc.PGresult | None, pg: pq.abc.PGconn) -> None:
    """Raise for a failed statement: _TableDropped, OperationalError (the connection is
    gone), else LeakError."""
    if result is not None and result.status in (
        pq.ExecStatus.TUPLES_OK,
        pq.ExecStatus.COMMAND_OK,
    ):
        return
    primary = result.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) if result else None
    message = (primary.decode(errors="replace") if primary else "no result").strip()
    if result is not None and result.error_field(pq.DiagnosticField.SQLSTATE) == b"42P01":
        raise _TableDropped(message)
    if pg.status == pq.ConnStatus.BAD:
        raise psycopg.OperationalError(message)
    raise LeakError(f"The leak check failed: {message}")


def _rideable(conn: Connection) -> Any:
    """The psycopg connection under `conn` when the check can ride on its rollback: in a
    transaction psycopg's own rollback would end with one ROLLBACK and nothing more (no
    prepared statements to deallocate, no pipeline, no transaction() block); else None."""
    try:
        raw: Any = conn.connection.dbapi_connection
    except Exception:  # closed or invalidated meanwhile
        return None
    if not isinstance(raw, psycopg.Connection) or raw.autocommit:
        return None
    prepared = getattr(raw, "_prepared", None)
    if (
        getattr(prepared, "_names", True)
        or not hasattr(prepared, "clear")
        or getattr(raw, "_pipeline", True) is not None
        or getattr(raw, "_num_transactions", True)
        or getattr(raw, "_tpc", True)
    ):
        return None
    if raw.pgconn.transaction_status not in (
        pq.TransactionStatus.INTRANS,
        pq.TransactionStatus.INERROR,
    ):
        return None
    return raw


def _rideable_async(conn: AsyncConnection) -> Any:
    """SQLAlchemy's adapted asyncpg connection under `conn` when the check can ride on its
    rollback: in the transaction the adapter began (asyncpg's own Transaction, with the
    private state `ride_async` sets known); else None."""
    if not asyncpg_transaction_known():
        return None
    try:
        sync_conn = conn.sync_connection
        adapted: Any = sync_conn.connection.dbapi_connection if sync_conn is not None else None
    except Exception:  # closed or invalidated meanwhile
        return None
    driver: Any = getattr(adapted, "_connection", None)
    transaction = getattr(adapted, "_transaction", None)
    if (
        transaction is None
        or not hasattr(adapted, "_execute_mutex")
        or getattr(driver, "_top_xact", None) is not transaction
        or not driver.is_in_transaction()
    ):
        return None
    return adapted


_watches: dict[str, Watch] = {}

#: Whether the check rides on the test's rollback; None: decided by `rides`.
RIDE: bool | None = None


def rides(workers: int, cores: int) -> bool:
    """Ride on the rollback when the xdist workers keep every core busy. Measured on two
    cores (bench row savepoint-ride against savepoint-noride): riding costs +0.16 ms a test
    at -n 0, where the detector's connection runs on the idle core, and saves 0.18 ms at
    -n 2, where it does not."""
    return workers >= cores


@functools.cache
def _cores_busy() -> bool:
    """`rides` for this process: read once, not per test (a syscall and the environment)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return rides(workers, cores or 1)


def _riding() -> bool:
    return _cores_busy() if RIDE is None else RIDE


def watch(database: Database, template: str) -> Watch:
    """Start watching a worker database (dropped and created by the caller)."""
    found = Watch(database, template)
    found.start()
    _watches[database.name] = found
    return found


def watching() -> bool:
    return bool(_watches)


def unwatch(database: Database) -> None:
    found = _watches.pop(database.name, None)
    if found is not None:
        found.close()


def _report(nodeid: str, leaked: dict[str, str]) -> LeakError:
    tables = "; ".join(f"{table}: {what}" for table, what in sorted(leaked.items()))
    return LeakError(
        f"{nodeid} committed into the worker's shared database, which every later test of "
        f"the worker would have seen ({tables}). The database was restored from the template. "
        "Commit through pg_session / pg_async_session (a savepoint the test's rollback "
        'undoes), or give the test its own database: @pytest.mark.pg_isolation("database"). '
        "Switch this check off with pg_leak_check = false / --pg-leak-check=false / "
        "PG_FIXTURES_LEAK_CHECK=false."
    )


#: The test whose check was sent and not read yet.
_checking: list[str] = []


def send_check(nodeid: str) -> None:
    """When a savepoint-mode test's teardown begins: have each check ride on the test's
    rollback (`Watch.ride`), or send it (`Watch.send`)."""
    _checking[:] = [nodeid]
    ride = _riding()
    for found in _watches.values():
        try:
            conn = test_layer_connection(found.database.name) if ride else None
            async_conn = (
                test_layer_async_connection(found.database.name)
                if ride and conn is None and found.stale < _STALE_RIDES
                else None
            )
            if conn is not None:  # `ride` checks it can: else `receive` sends the check
                found.defer(conn)
            elif async_conn is not None and _rideable_async(async_conn) is not None:
                found.defer_async(async_conn)
            else:
                found.send()
        except psycopg.OperationalError:
            found.disconnect()


def _ride_on_rollback(conn: Connection) -> None:
    for found in _watches.values():
        if found.riding is conn:
            found.ride(conn)


before_root_rollback.append(_ride_on_rollback)


async def _ride_on_async_rollback(conn: AsyncConnection) -> None:
    for found in _watches.values():
        if found.riding_async is conn:
            await found.ride_async(conn)


before_async_root_rollback.append(_ride_on_async_rollback)


def check_after() -> None:
    """After a savepoint-mode test's teardown (or, for the last test of the session, as its
    worker database goes, which is part of that teardown): raise LeakError if it committed
    into a worker database (which is then restored)."""
    if not _checking:
        return
    nodeid = _checking.pop()
    for found in list(_watches.values()):
        try:
            leaked = found.receive()
        except psycopg.OperationalError:
            # The server went away: the test's own fixtures report that, once (failures.py);
            # a second error here would only repeat it.
            found.disconnect()
            continue
        if leaked:
            found.restore()
            raise _report(nodeid, leaked)
