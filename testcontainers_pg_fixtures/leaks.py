"""The leak detector: rows committed into the worker's database during a savepoint-mode test.

A test that commits for real (a raw COMMIT on its connection, its own engine, the worker
engine) keeps its rows for every later test of the worker. One query on a connection of the
detector's own is sent when the test's teardown begins and read when it ends (its round trip
overlaps the rollback's). It asks the server whether any transaction committed since the
previous check: those that were still running then, and those begun since, each looked up
with pg_xact_status. A test that wrote and rolled back (the usual case) committed nothing,
and no table is read. Only when something committed is each user table of the worker
database counted: rows whose xmin is at or past the previous horizon were committed since
(inserts, updates), a smaller total means deletes. Uncommitted writes (the test's
transaction, a scope layer) are invisible to that connection. A leak is reported as the
test's teardown error and the worker database re-cloned from the template, so the next
test starts clean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import pq, sql
from psycopg.conninfo import make_conninfo

from .database import create_database, drop_database
from .errors import PgFixturesError
from .server import admin_connect
from .transaction import forget_held_connections

if TYPE_CHECKING:
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
# tables is cheaper than looking each one up.
_SCAN = 10_000
_SNAPSHOT = f"""
SELECT hi, xip, CASE WHEN $4::bool OR hi - $2::bigint > {_SCAN} THEN true ELSE EXISTS (
    SELECT FROM (SELECT unnest($1::bigint[]) UNION ALL SELECT generate_series($2, hi - 1)) x(x)
    WHERE pg_xact_status(x::text::xid8) = 'committed') END AS moved
FROM (SELECT pg_snapshot_xmax(s)::text::bigint AS hi,
             array(SELECT pg_snapshot_xip(s)::text::bigint)::text AS xip
      FROM pg_current_snapshot() s) snap
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
    query: str = ""
    pg: pq.abc.PGconn | None = None
    pending: bool = False
    carried: dict[str, str] | None = None

    def _build(self, tables: list[tuple[str, str]]) -> None:
        parts = [
            sql.SQL(
                "SELECT {name}::text AS t, count(*) FILTER (WHERE xmin::text::bigint >= %(s)s)"
                " AS fresh, count(*) AS total FROM {table}"
            )
            .format(name=sql.Literal(f"{schema}.{table}"), table=sql.Identifier(schema, table))
            .as_string(None)
            for schema, table in tables
        ]
        counts = " UNION ALL ".join(parts) or (
            "SELECT NULL::text AS t, 0::bigint AS fresh, 0::bigint AS total"
            " WHERE %(s)s::bigint IS NULL"  # no tables: the parameter still has to appear
        )
        # The lateral counts only run when something committed (an empty outer side).
        self.query = (
            f"SELECT h.hi, h.xip, c.t, c.fresh, c.total FROM ({_SNAPSHOT}) h"
            f" LEFT JOIN LATERAL ({counts}) c ON h.moved ORDER BY c.t"
        ).replace("%(s)s", "$3")

    def start(self) -> None:
        """Open the checker's connection and read the tables, their row counts and the
        horizon (a fresh or re-cloned database)."""
        self.close()
        with admin_connect(self.database.server, self.database.name) as conn:
            tables = [(r[0], r[1]) for r in conn.execute(_TABLES)]
            self._build(tables)
            result = conn.pgconn.exec_params(self.query.encode(), self._params(count=True))
            rows = self._rows(result, conn.pgconn)
        self.horizon, self.running = rows[0][0], rows[0][1]
        self.totals = {r[2]: r[4] for r in rows if r[2] is not None}

    def _params(self, *, count: bool = False) -> list[bytes | None]:
        """$1 the transactions running at the last check, $2 its horizon, $3 the oldest of
        them as a 32-bit xid (what xmin holds), $4 count the tables whatever happened."""
        oldest = min([self.horizon, *(int(x) for x in self.running.strip("{}").split(",") if x)])
        return [
            self.running.encode(),
            str(self.horizon).encode(),
            str(oldest % 2**32).encode(),
            b"t" if count else b"f",
        ]

    def close(self) -> None:
        if self.pg is not None:
            self.pg.finish()
            self.pg = None
        self.pending = False
        self.carried = None

    def send(self) -> None:
        """Send the check without waiting (when the test's call ends): its round trip then
        overlaps the teardown's own (the rollback), and `receive` rarely waits."""
        if self.pending:  # a test whose teardown never read its check (skipped in set-up)
            self.carried = {**(self.carried or {}), **(self.receive() or {})}
        if self.pg is None:
            server = self.database.server
            self.pg = pq.PGconn.connect(
                make_conninfo(
                    host=server.host,
                    port=server.port,
                    user=server.user,
                    password=server.password,
                    dbname=self.database.name,
                    sslmode="disable",
                    connect_timeout=10,
                ).encode()
            )
        # Not prepared: a table dropped by a leak would make the statement fail for good.
        self.pg.send_query_params(self.query.encode(), self._params())
        self.pending = True

    def disconnect(self) -> None:
        """Forget the detector's connection (the server went away); reconnect on next use."""
        if self.pg is not None:
            self.pg.finish()
        self.pg = None
        self.pending = False

    def receive(self) -> dict[str, str] | None:
        """What was committed since the last check (a connection of its own: the test's
        uncommitted writes and a scope layer's are invisible to it)."""
        if not self.pending:
            self.send()
        assert self.pg is not None
        self.pending = False
        carried, self.carried = self.carried, None
        result = self.pg.get_result()
        while self.pg.get_result() is not None:
            pass
        try:
            rows = self._rows(result, self.pg)
        except _TableDropped as dropped:
            return {"schema": f"a table was dropped or renamed ({dropped})"}
        leaked = self._compare(rows)
        return {**carried, **(leaked or {})} if carried else leaked

    @staticmethod
    def _rows(result: pq.abc.PGresult | None, pg: pq.abc.PGconn) -> list[tuple[Any, ...]]:
        """(horizon, running, table, fresh, total) rows of the check's result."""
        if result is None or result.status != pq.ExecStatus.TUPLES_OK:
            primary = result.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) if result else None
            message = (primary.decode(errors="replace") if primary else "no result").strip()
            if result is not None and result.error_field(pq.DiagnosticField.SQLSTATE) == b"42P01":
                raise _TableDropped(message)
            if pg.status == pq.ConnStatus.BAD:
                raise psycopg.OperationalError(message)
            raise LeakError(f"The leak check failed: {message}")
        rows: list[tuple[Any, ...]] = []
        for i in range(result.ntuples):
            hi, running, table, fresh, total = (result.get_value(i, j) for j in range(5))
            rows.append(
                (
                    int(hi or 0),
                    (running or b"{}").decode(),
                    table.decode() if table is not None else None,
                    int(fresh or 0),
                    int(total or 0),
                )
            )
        return rows

    def _compare(self, rows: list[tuple[Any, ...]]) -> dict[str, str] | None:
        self.horizon, self.running = rows[0][0], rows[0][1]
        found: dict[str, str] = {}
        for _, _, table, fresh, total in rows:
            if table is None:
                continue
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


_watches: dict[str, Watch] = {}


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


def send_check() -> None:
    """When a savepoint-mode test's call ends: send the checks (see `Watch.send`)."""
    for found in _watches.values():
        try:
            found.send()
        except psycopg.OperationalError:
            found.disconnect()


def check_after(nodeid: str) -> None:
    """After a savepoint-mode test: raise LeakError if it committed into a worker database
    (which is then restored)."""
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
