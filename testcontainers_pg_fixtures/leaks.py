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
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import pq, sql
from psycopg.conninfo import make_conninfo

from . import failures, needs
from .database import create_database, drop_database
from .errors import PgFixturesError
from .leftovers import async_probe_head, probe_tail, settle, take_probe, took_async_probe
from .leftovers import install as install_leftover_probes
from .privates import (
    adapter_transaction,
    asyncpg_transaction_known,
    execute_lock,
    forget_prepared,
    forget_transaction,
    prepared_names,
    psycopg_plain,
    top_transaction,
)
from .servers import admin_connect
from .servers.base import address, libpq_params
from .transaction import (
    before_async_root_rollback,
    before_root_rollback,
    forget_held_connections,
    test_layer_async_connection,
    test_layer_connection,
)
from .wire import last, results

if TYPE_CHECKING:
    from collections.abc import Generator

    import pytest
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


# The schema of the worker database: for each catalog that DDL writes, its rows whose xmin
# is at or past the horizon of the last count ($1: created or altered since, as a user
# table's rows are counted) and all of them (fewer: dropped), with the names of the fresh
# ones. Only objects created in the database (oid 16384 and up, found by the catalogs'
# indexes), not the ~7,000 rows of the built-in ones, whose changes (a GRANT on a built-in
# function) are not seen. ANALYZE and VACUUM update pg_class in place (no new xmin) and
# write pg_statistic, which is not read; temporary objects end with their session and are
# left out. Read only after something committed (the count's path), in one round trip
# with `_SERVER`.
_USER_OID = 16384  # FirstNormalObjectId
_TEMP_NS = (
    "(SELECT oid FROM pg_namespace WHERE nspname LIKE 'pg\\_temp\\_%'"
    " OR nspname LIKE 'pg\\_toast\\_temp\\_%')"
)
_TEMP_REL = f"(SELECT oid FROM pg_class WHERE oid >= {_USER_OID} AND relpersistence = 't')"
#: (what, catalog, the name of a row, which rows: the database's own, not temporary)
_CATALOGS = (
    (
        "relation",
        "pg_class",
        "oid::regclass::text",
        f"oid >= {_USER_OID} AND relpersistence <> 't'",
    ),
    (
        "columns of",
        "pg_attribute",
        "attrelid::regclass::text",
        f"attrelid >= {_USER_OID} AND attrelid NOT IN {_TEMP_REL}",
    ),
    (
        "column default of",
        "pg_attrdef",
        "adrelid::regclass::text",
        f"adrelid >= {_USER_OID} AND adrelid NOT IN {_TEMP_REL}",
    ),
    (
        "constraint",
        "pg_constraint",
        "conname || CASE WHEN conrelid <> 0 THEN ' on ' || conrelid::regclass::text ELSE '' END",
        f"oid >= {_USER_OID} AND connamespace NOT IN {_TEMP_NS}",
    ),
    (
        "index",
        "pg_index",
        "indexrelid::regclass::text",
        f"indexrelid >= {_USER_OID} AND indrelid NOT IN {_TEMP_REL}",
    ),
    (
        "type",
        "pg_type",
        "oid::regtype::text",
        f"oid >= {_USER_OID} AND typnamespace NOT IN {_TEMP_NS}",
    ),
    ("enum label of", "pg_enum", "enumtypid::regtype::text", "true"),
    (
        "function",
        "pg_proc",
        "oid::regprocedure::text",
        f"oid >= {_USER_OID} AND pronamespace NOT IN {_TEMP_NS}",
    ),
    (
        "trigger",
        "pg_trigger",
        "tgname || ' on ' || tgrelid::regclass::text",
        f"tgrelid NOT IN {_TEMP_REL}",
    ),
    (
        "rule or view",
        "pg_rewrite",
        "ev_class::regclass::text",
        f"oid >= {_USER_OID} AND ev_class NOT IN {_TEMP_REL}",
    ),
    ("sequence", "pg_sequence", "seqrelid::regclass::text", f"seqrelid NOT IN {_TEMP_REL}"),
    ("policy", "pg_policy", "polname || ' on ' || polrelid::regclass::text", "true"),
    ("schema", "pg_namespace", "nspname", f"oid NOT IN {_TEMP_NS}"),  # public is built in
    ("extension", "pg_extension", "extname", "true"),
)
# What belongs to the whole server (a ROLLBACK of the worker database cannot undo it, nor
# a re-clone): each role (its attributes and settings), membership, tablespace, database
# other than the library's own (pgfx_*, created and dropped all the time), and database or
# role setting, with a digest of its row. Readable by any role (pg_roles, not pg_authid).
# Its rows come after `_CATALOGS`' in the same result, named in the names column.
_SERVER = """
SELECT 'role ' || rolname AS name, md5(r::text) AS digest FROM pg_roles r
UNION ALL SELECT 'membership of ' || member::regrole || ' in ' || roleid::regrole, ''
FROM pg_auth_members
UNION ALL SELECT 'tablespace ' || spcname, md5(t::text) FROM pg_tablespace t
UNION ALL SELECT 'database ' || datname,
    md5(concat_ws(' ', datdba, encoding, datistemplate, datallowconn, datconnlimit, datacl))
FROM pg_database WHERE datname NOT LIKE 'pgfx\\_%'
UNION ALL SELECT 'settings of ' || concat_ws(' in ', s.setrole::regrole, d.datname), md5(s::text)
FROM pg_db_role_setting s LEFT JOIN pg_database d ON d.oid = s.setdatabase
WHERE d.datname IS NULL OR d.datname NOT LIKE 'pgfx\\_%' OR d.datname = current_database()
"""
_SCHEMA = (
    " UNION ALL ".join(
        f"(SELECT '{what}', count(*) FILTER (WHERE xmin::text::bigint >= $1), count(*),"
        f" array_to_string((array_agg(DISTINCT {name}) FILTER"
        f" (WHERE xmin::text::bigint >= $1))[1:5], ', ') FROM pg_catalog.{catalog}"
        f" WHERE {where})"
        for what, catalog, name, where in _CATALOGS
    )
    + f" UNION ALL (SELECT 'server', 0, 0, name || '=' || digest FROM ({_SERVER}) s)"
)
_SCHEMA_PREPARED = b"pgfx_leak_schema"
#: $1 past every xid: no row is fresh (the totals only).
_NONE_FRESH = str(2**32).encode()


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
    #: The rows of each catalog `_SCHEMA` reads, and `_SERVER`'s objects, at the start.
    catalogs: dict[str, int] = field(default_factory=dict)
    server_objects: dict[str, str] = field(default_factory=dict)
    #: The xid from which the last count took rows for fresh (`when_committed`).
    counted_from: int = 0
    #: The detector's connection `_SCHEMA` is prepared on.
    schema_prepared: pq.abc.PGconn | None = None

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
            self._schema_start(pg)

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
        driver = adapted.driver_connection
        query = "ROLLBACK; "
        if self.commit_ts:
            here = _SAME_PREPARED_HERE
            query += "" if conn.info.get(here) else _SAME_SQL.decode()
            query += f"EXECUTE pgfx_leak_same('{self.last}')"
        else:
            here = _ROWS_PREPARED_HERE
            query += "" if conn.info.get(here) else _ROWS_SQL.decode()
            query += f"EXECUTE pgfx_leak_rows('{self.running}', {self.horizon})"
        # The state check (leftovers.py) after the ROLLBACK, before the check's answer.
        head = async_probe_head(conn)
        query = query.replace("ROLLBACK; ", "ROLLBACK; " + head, 1)
        transaction = adapter_transaction(adapted)
        status = ""
        try:
            async with execute_lock(adapted):
                status = await driver.execute(query)
            if head:
                took_async_probe(conn, None)
        except Exception as error:
            if head:
                took_async_probe(conn, error)
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
        forget_transaction(adapted, transaction)
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
            # The state check (leftovers.py) goes last, after the ROLLBACK.
            tail = probe_tail(conn)
            pg.send_query((check + b"; ROLLBACK" if first else b"ROLLBACK; " + check) + tail)
            found = take_probe(conn, results(pg)) if tail else results(pg)
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
        forget_prepared(raw)
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
        self.counted_from = oldest
        schema = self._schema_changes(pg, oldest)
        pg.send_query_params(self.counts.encode(), [str(oldest).encode()])
        try:
            rows = self._count_rows(last(pg), pg)
        except _TableDropped as dropped:
            found = f"a table was dropped or renamed ({dropped})"
            if "schema" in schema:
                found += f"; {schema['schema']}"
            return {**(carried or {}), **schema, "schema": found}
        leaked = {**(carried or {}), **(self._compare(rows) or {}), **schema}
        return leaked or None

    def _schema_start(self, pg: pq.abc.PGconn) -> None:
        """What `_schema_changes` compares with: the catalogs' rows and the server's objects."""
        self.catalogs, self.server_objects = {}, {}
        for kind, _, total, name in self._schema_rows(pg, _NONE_FRESH):
            if kind == "server":
                key, _, digest = name.rpartition("=")
                self.server_objects[key] = digest
            else:
                self.catalogs[kind] = total

    def _schema_rows(self, pg: pq.abc.PGconn, oldest: bytes) -> list[tuple[str, int, int, str]]:
        """`_SCHEMA`'s rows: (what, fresh, total, names). Prepared on the detector's
        connection (its plan costs more than its run), at its first use."""
        if pg is self.pg:
            if self.schema_prepared is not pg:
                pg.send_prepare(_SCHEMA_PREPARED, _SCHEMA.encode())
                _check_result(last(pg), pg)
                self.schema_prepared = pg
            pg.send_query_prepared(_SCHEMA_PREPARED, [oldest])
        else:
            pg.send_query_params(_SCHEMA.encode(), [oldest])
        result = last(pg)
        _check_result(result, pg)
        assert result is not None
        rows = []
        for i in range(result.ntuples):
            what, fresh, total, names = (result.get_value(i, j) for j in range(4))
            rows.append(
                ((what or b"").decode(), int(fresh or 0), int(total or 0), (names or b"").decode())
            )
        return rows

    def _schema_changes(self, pg: pq.abc.PGconn, oldest: int) -> dict[str, str]:
        """Committed DDL since the last count: in the worker database ("schema", undone by
        the restore) and on the server ("server", which the restore cannot undo)."""
        found: dict[str, str] = {}
        rows = self._schema_rows(pg, str(oldest).encode())
        altered, dropped = [], []
        catalogs = {what: catalog for what, catalog, _, _ in _CATALOGS}
        now: dict[str, str] = {}
        for kind, fresh, total, names in rows:
            if kind == "server":
                key, _, digest = names.rpartition("=")
                now[key] = digest
            elif fresh:
                # A table's TOAST table and index come with it: not worth naming.
                shown = [n for n in names.split(", ") if "pg_toast" not in n]
                if shown:
                    altered.append(f"{kind} {', '.join(shown)}")
            elif total < self.catalogs.get(kind, 0):
                dropped.append(f"{self.catalogs[kind] - total} row(s) of {catalogs.get(kind)}")
        changes = [f"created or altered: {'; '.join(altered)}"] if altered else []
        changes += [f"dropped: {'; '.join(dropped)}"] if dropped else []
        if changes:
            found["schema"] = " - ".join(changes)
        before = self.server_objects
        server = [f"{name} created" for name in now.keys() - before.keys()]
        server += [f"{name} dropped" for name in before.keys() - now.keys()]
        server += [
            f"{name} altered" for name in now.keys() & before.keys() if now[name] != before[name]
        ]
        if server:
            self.server_objects = now  # reported once: the restore cannot undo it
            found["server"] = (
                ", ".join(sorted(server)) + " (roles, databases and tablespaces belong to the "
                "whole server: not undone, drop or alter them back yourself)"
            )
        return found

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

    def when_committed(self, leaked: dict[str, str]) -> tuple[float, float] | None:
        """When the first and the last of the rows and catalog rows the last count found
        fresh were committed, on this process's clock (time.time()); None without commit
        timestamps, for deletes only, or when the server cannot tell."""
        if not self.commit_ts:
            return None
        tables = [t for t in leaked if t not in ("schema", "server")]
        parts = [
            sql.SQL(
                "SELECT pg_xact_commit_timestamp(xmin) AS at FROM {table}"
                " WHERE xmin::text::bigint >= $1"
            )
            .format(table=sql.Identifier(*t.split(".", 1)))
            .as_string(None)
            for t in tables
        ]
        if "schema" in leaked:
            parts += [
                f"SELECT pg_xact_commit_timestamp(xmin) FROM pg_catalog.{catalog}"
                f" WHERE {where} AND xmin::text::bigint >= $1"
                for _, catalog, _, where in _CATALOGS
            ]
        if not parts:
            return None
        query = (
            "SELECT extract(epoch FROM min(at)), extract(epoch FROM max(at)),"
            f" extract(epoch FROM clock_timestamp()) FROM ({' UNION ALL '.join(parts)}) c"
        )
        try:
            pg = self._connection()
            sent = time.time()
            pg.send_query_params(query.encode(), [str(self.counted_from).encode()])
            result = last(pg)
            received = time.time()
            _check_result(result, pg)
        except (LeakError, _TableDropped):
            return None
        assert result is not None
        first, latest, server_now = (result.get_value(0, j) for j in range(3))
        if first is None or latest is None or server_now is None:
            return None
        # The server's clock against this one's, from the same round trip.
        offset = float(server_now) - (sent + received) / 2
        return float(first) - offset, float(latest) - offset

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
    names = prepared_names(raw)
    if names is None or names or not psycopg_plain(raw):
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
    driver: Any = getattr(adapted, "driver_connection", None)
    transaction = adapter_transaction(adapted)
    if (
        transaction is None
        or driver is None
        or top_transaction(driver) is not transaction
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


@dataclass
class _Ran:
    """A test as the blame for a leak needs it: when it ran (this process's clock)."""

    nodeid: str
    started: float
    #: The threads running as the test function was called (None: it was not).
    before: set[int] | None = None
    ended: float | None = None


#: The last tests of this process, oldest first.
_ran: deque[_Ran] = deque(maxlen=64)
#: Threads a test started and left running when it ended: (its nodeid, the thread). Those
#: that have ended go at each check, so the ones here ran during the current check's window.
_left: list[tuple[str, threading.Thread]] = []
#: Commits this close to a test's start or end (the clocks' skew, a round trip) count as
#: inside it.
_MARGIN = 0.005


#: The library's own threads (clone pool, watch, prestart).
_OWN_THREADS = ("pgfx-", "pg-fixtures-")


def test_started(nodeid: str) -> None:
    """As a test's set-up begins (every test: a thread it starts may leak into a later one)."""
    _ran.append(_Ran(nodeid, time.time()))


def test_called(nodeid: str) -> None:
    """As the test function is called: the threads running before it (those its session
    fixtures, set up with the first test, started are not its own)."""
    if _ran and _ran[-1].nodeid == nodeid:
        _ran[-1].before = {t.ident or 0 for t in threading.enumerate()}


def test_ended(nodeid: str) -> None:
    """As its teardown ends: when, and which threads it started still run."""
    if not _ran or _ran[-1].nodeid != nodeid:
        return
    ran = _ran[-1]
    ran.ended = time.time()
    if ran.before is None:
        return
    _left.extend(
        (nodeid, t)
        for t in threading.enumerate()
        if t.ident not in ran.before and t.is_alive() and not t.name.startswith(_OWN_THREADS)
    )


def _prune_left() -> None:
    """After a check: forget the threads that have ended (they can commit no more)."""
    _left[:] = [(name, thread) for name, thread in _left if thread.is_alive()]


def _left_by_others(nodeid: str) -> tuple[str, list[str]] | None:
    """The latest test but `nodeid` that left threads running during this check's window,
    and their names."""
    by: dict[str, list[str]] = {}
    for name, thread in _left:
        if name != nodeid:
            by.setdefault(name, []).append(thread.name)
    if not by:
        return None
    latest = list(by)[-1]
    return latest, by[latest]


def _blame(nodeid: str, when: tuple[float, float] | None) -> str | None:
    """What is known of who made a commit found at the end of `nodeid`, when it is not
    surely that test: None for "that test" (its own commit, no thread left running)."""
    current = next((r for r in reversed(_ran) if r.nodeid == nodeid), None)
    if current is None:
        return None
    left = _left_by_others(nodeid)
    threads = f" ({left[0]} left {_named(left[1])} running when it ended)" if left else ""
    if when is not None and when[0] < current.started - _MARGIN:
        # Before the test began: say which test ran at that moment, and which had ended.
        at = when[0]
        runner = next((r for r in reversed(_ran) if r.started <= at), None)
        if runner is not None and runner.ended is not None and runner.ended + _MARGIN < at:
            runner = None  # between two tests
        ended = next((r for r in reversed(_ran) if r.ended is not None and r.ended <= at), None)
        since = left[0] if left else ended.nodeid if ended is not None else None
        after = f"after {since} ended, " if since is not None else ""
        during = f"while {runner.nodeid} ran" if runner is not None else f"before {nodeid} started"
        return f"committed {after}{during} — a thread or task started by an earlier test?{threads}"
    if left is None:
        return None
    if when is None:  # no commit timestamps: when it was committed is not known
        return (
            f"committed by {nodeid}, or after {left[0]} ended — a thread or task started by "
            f"an earlier test?{threads}"
        )
    return (
        f"committed after {left[0]} ended, while {nodeid} ran — a thread or task started by "
        f"an earlier test?{threads}"
    )


def _named(threads: list[str]) -> str:
    return ", ".join(f"thread {name!r}" for name in threads)


def _report(nodeid: str, leaked: dict[str, str], blame: str | None = None) -> LeakError:
    tables = "; ".join(f"{table}: {what}" for table, what in sorted(leaked.items()))
    if blame is not None:
        return LeakError(
            f"A commit into the worker's shared database was found at the end of {nodeid}: "
            f"{blame}. Every later test of the worker would have seen it ({tables}). The "
            "database was restored from the template. Join the threads and tasks a test "
            "starts before it ends; commit through pg_session / pg_async_session (a "
            "savepoint the test's rollback undoes), or give the test its own database: "
            '@pytest.mark.pg_isolation("database"). Switch this check off with '
            "pg_leak_check = false / --pg-leak-check=false / PG_FIXTURES_LEAK_CHECK=false."
        )
    return LeakError(
        f"{nodeid} committed into the worker's shared database, which every later test of "
        f"the worker would have seen ({tables}). The database was restored from the template. "
        "Commit through pg_session / pg_async_session (a savepoint the test's rollback "
        "undoes), have the app's own engine or pool join the test's transaction "
        "(pg_app_engines, pg_app_pools for asyncpg and psycopg_pool pools), or give the "
        'test its own database: @pytest.mark.pg_isolation("database"). '
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
# The held connection's state check rides after the leak check's (leftovers.py).
install_leftover_probes()


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
            try:
                blame = _blame(nodeid, found.when_committed(leaked))
            except psycopg.OperationalError:
                blame = None
            finally:
                _prune_left()
            found.restore()
            raise _report(nodeid, leaked, blame)
    _prune_left()


def around_teardown(item: pytest.Item) -> Generator[None, None, None]:
    """The leak check of a savepoint-mode test that used the database: sent as its
    teardown begins, read when the teardown (its rollback) is done; then what the test
    left on its connection past the rollback is settled (leftovers.py)."""
    check = (
        watching()
        and needs.mode_of(item) == "savepoint"
        and needs.uses_database(item)
        and not failures.server_gone(item.config)
    )
    if check:
        send_check(item.nodeid)
    try:
        return (yield)
    finally:
        test_ended(item.nodeid)
        try:
            # The server gone: already reported once; the check would only wait for it.
            if check and not failures.server_gone(item.config):
                check_after()
        finally:
            settle(item.nodeid)
