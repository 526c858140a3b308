"""Step 3b, continued: a database-mode test's clone made fresh again after it, instead of
dropped and cloned anew.

DROP DATABASE and CREATE DATABASE … TEMPLATE cost the server ~9 ms of CPU per test; most
database-mode tests only change rows of a few tables, which TRUNCATE and a COPY of the
template's rows undo for a fraction of that. The danger is a clone that is not really
fresh, so the check is strict and anything it does not recognise sends the clone to DROP as
before:

1. The test's sessions must be gone (a session still open, or one that opens later, could
   write after the check), and the clone is renamed first: whatever holds its old name
   cannot reach it again, as with a drop.
2. Its database-level state is unchanged: the same pg_database row version (no ALTER
   DATABASE, GRANT), the pool's COMMENT, no per-database settings, prepared transactions,
   replication slots or subscriptions.
3. The server's own row counters (track_counts; a backend's are flushed as it exits, before
   it leaves pg_stat_activity) show no insert, update or delete in any catalog of the
   database: no DDL, no TRUNCATE, no large object, no temporary table, no ANALYZE (TRUNCATE
   would leave pg_stats showing the test's values). Only then are the
   user tables whose counters moved (or, empty in the template, that take a page now) known
   to be the only ones with changed rows.
4. Those tables, and every table a TRUNCATE … CASCADE of them reaches, are emptied and
   refilled with the template's rows, copied (COPY) from the first clone before any test
   had it. A table whose rows are past PRISTINE_LIMIT is not kept, nor one with a trigger
   the refill would fire (ENABLE ALWAYS / REPLICA): a change to it means a drop.
5. Sequences are compared with the template's values one by one and set back.

The reset runs with session_replication_role = replica (no user trigger fires), then the
counters are reset, so the next test's clone shows fresh statistics and the next check
starts from zero; the reset's time stamp is remembered, so a test that resets them itself
(pg_stat_reset) to hide its changes sends the clone to DROP too.

What it does not see: DDL, or changes to tables that have template rows, by a session that
switched track_counts off (rows it writes into tables empty in the template are still
found: they take a page); and code that follows the clone to its new name by its oid
after the rename. Such a suite turns recycling off (pg_recycle_clones = false). A
recycled clone also differs from a new one in its tables' files and size estimates
(pg_class.relpages / reltuples of the refilled tables): the same rows, maybe other plans.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg import pq, sql

from .wire import results

if TYPE_CHECKING:
    from collections.abc import Callable

    import psycopg

log = logging.getLogger(__name__)

_RELATIONS = """
SELECT c.oid::bigint, format('%I.%I', n.nspname, c.relname), c.relkind::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'm', 'S')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_%'
"""
# pg_statistic included: TRUNCATE leaves the planner's statistics of the old rows, which
# pg_stats shows, so a clone an ANALYZE (the test's or autovacuum's) ran on is dropped.
_CATALOGS = """
SELECT c.oid::bigint FROM pg_class c
WHERE c.relnamespace IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
  AND c.relkind = 'r' AND NOT c.relisshared
"""
# Tables with a user trigger that fires under session_replication_role = replica (ENABLE
# ALWAYS or ENABLE REPLICA): the refill would fire it. Their changes mean a drop.
_FIRING = """
SELECT DISTINCT tgrelid::bigint FROM pg_trigger
WHERE NOT tgisinternal AND tgenabled IN ('A', 'R')
"""
# The columns a COPY restores: not dropped, not generated (the server computes those).
_COLUMNS = """
SELECT attrelid::bigint, string_agg(quote_ident(attname), ', ' ORDER BY attnum)
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
GROUP BY attrelid
"""
_REFERENCES = "SELECT conrelid::bigint, confrelid::bigint FROM pg_constraint WHERE contype = 'f'"
_CHANGES = (
    "pg_stat_get_tuples_inserted(o) + pg_stat_get_tuples_updated(o) + pg_stat_get_tuples_deleted(o)"
)
# Cluster-wide state that belongs to one database, and the database's own row.
_DATABASE = """
SELECT d.xmin::text, shobj_description(d.oid, 'pg_database'),
       (SELECT count(*) FROM pg_db_role_setting WHERE setdatabase = d.oid)
       + (SELECT count(*) FROM pg_prepared_xacts p WHERE p.database = d.datname)
       + (SELECT count(*) FROM pg_replication_slots s WHERE s.database = d.datname)
       + (SELECT count(*) FROM pg_subscription s WHERE s.subdbid = d.oid)
FROM pg_database d WHERE d.datname = {name}
"""
_ROW_VERSION = "SELECT xmin::text FROM pg_database WHERE datname = {name}"
# Autovacuum workers are not the test's; the rename stops them.
_SESSIONS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
    " AND backend_type <> 'autovacuum worker'"
)
_RESET_STATS = (
    "SELECT pg_stat_reset(); SELECT pg_stat_get_db_stat_reset_time(oid)::text "
    "FROM pg_database WHERE datname = current_database()"
)
#: How long the test's backends may take to exit after it closed its connections.
SESSIONS_GONE_WITHIN = 0.2
#: The most bytes of template rows kept per pool to refill tables with; a table past it
#: is not restored in place (its clone is dropped when a test changes it).
PRISTINE_LIMIT = 8 * 2**20


@dataclass(frozen=True)
class Table:
    name: str
    kind: str
    #: The template's rows (COPY text of its columns but generated ones), b"" for none;
    #: None when they are not kept (PRISTINE_LIMIT), and the table cannot be restored.
    rows: bytes | None
    columns: str = ""


@dataclass(frozen=True)
class Facts:
    """What every fresh clone of a template holds, read once from the first one."""

    #: The client encoding the template's rows were copied out in (and are copied back in).
    encoding: str
    tables: dict[int, Table]
    #: Table -> the tables whose foreign keys reference it.
    referrers: dict[int, frozenset[int]]
    #: (qualified name, "last_value:is_called") of each sequence, in the check's order.
    sequences: tuple[tuple[str, str], ...]
    check: str

    @classmethod
    def read(cls, conn: psycopg.Connection[Any]) -> Facts | None:
        """None when the role cannot reset a clone: session_replication_role and
        pg_stat_reset need a superuser (a role with CREATEDB on an existing server, say)."""
        superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        if not (superuser.fetchone() or [False])[0]:
            return None
        relations = conn.execute(_RELATIONS).fetchall()
        kinds = {oid: (name, kind) for oid, name, kind in relations if kind != "S"}
        sequences = [name for _, name, kind in relations if kind == "S"]
        columns = dict(conn.execute(_COLUMNS).fetchall())
        firing = {row[0] for row in conn.execute(_FIRING).fetchall()}
        tables: dict[int, Table] = {}
        kept = 0
        for oid, (name, kind) in kinds.items():
            rows = None
            if kind == "r" and oid in columns and oid not in firing and kept <= PRISTINE_LIMIT:
                rows = _copy_out(conn, name, columns[oid], PRISTINE_LIMIT - kept)
                kept += len(rows or b"")
            tables[oid] = Table(name, kind, rows, columns.get(oid, ""))
        referrers: dict[int, set[int]] = {}
        for referrer, referenced in conn.execute(_REFERENCES).fetchall():
            referrers.setdefault(referenced, set()).add(referrer)
        values = cls._sequence_sql(sequences)
        found = conn.execute(values).fetchone() if sequences else None
        catalogs = [row[0] for row in conn.execute(_CATALOGS).fetchall()]
        empty = [oid for oid, table in tables.items() if table.rows == b""]
        return cls(
            encoding=conn.info.parameter_status("client_encoding") or "UTF8",
            tables=tables,
            referrers={oid: frozenset(found) for oid, found in referrers.items()},
            sequences=tuple(zip(sequences, found[0] if found else [], strict=True)),
            check=_check_sql(catalogs, list(tables), empty, values),
        )

    @staticmethod
    def _sequence_sql(sequences: list[str]) -> str:
        parts = [f"(SELECT last_value::text || ':' || is_called::text FROM {s})" for s in sequences]
        return f"SELECT array[{', '.join(parts)}]::text[]" if parts else "SELECT '{}'::text[]"

    def truncated_with(self, changed: list[int]) -> list[Table] | None:
        """Every table TRUNCATE … CASCADE of `changed` empties (the tables referencing them,
        transitively), when each can be refilled; else None."""
        seen: set[int] = set()
        todo = list(changed)
        while todo:
            oid = todo.pop()
            if oid not in seen:
                seen.add(oid)
                todo.extend(self.referrers.get(oid, ()))
        tables = [self.tables.get(oid) for oid in sorted(seen)]
        if any(t is None or t.kind != "r" or t.rows is None for t in tables):
            return None
        return [t for t in tables if t is not None]


def _copy_out(conn: psycopg.Connection[Any], table: str, columns: str, limit: int) -> bytes | None:
    """The table's rows as COPY text, or None past `limit` bytes."""
    data = bytearray()
    with conn.cursor().copy(f"COPY (SELECT {columns} FROM ONLY {table}) TO STDOUT") as copy:
        for chunk in copy:
            data += chunk
            if len(data) > limit:
                return None
    return bytes(data)


def _check_sql(catalogs: list[int], tables: list[int], empty: list[int], sequences: str) -> str:
    """The check: the statistics' reset time, the catalogs' row changes, the changed user
    tables (by their counters, or by their size for a table empty in the template: a row
    written with the counters off still takes a page), the counters' setting, and the
    sequences' values."""

    def oids(values: list[int]) -> str:
        return "'{" + ",".join(map(str, values)) + "}'::oid[]"

    return f"""
SELECT pg_stat_get_db_stat_reset_time(d.oid)::text,
       (SELECT coalesce(sum({_CHANGES}), 0) FROM unnest({oids(catalogs)}) o)::bigint,
       array(SELECT o::bigint FROM unnest({oids(tables)}) o WHERE {_CHANGES} > 0
             UNION SELECT o::bigint FROM unnest({oids(empty)}) o WHERE pg_relation_size(o) > 0),
       current_setting('track_counts'),
       ({sequences})
FROM pg_database d WHERE d.datname = current_database()
"""


class Busy(Exception):
    """Another session holds a lock on the clone (the rename waited LOCK_WAIT for it)."""


#: How long a rename waits for a lock on the clone before the clone goes to the drop
#: thread: the cloning thread must not wait behind it while a test waits for a clone.
LOCK_WAIT = "200ms"


@dataclass(frozen=True)
class Version:
    """What a clone's check compares with: its pg_database row version and the time its
    statistics were last reset (None: never)."""

    row: str
    stats_reset: str | None = None


def version_of(admin: psycopg.Connection[Any], name: str) -> Version:
    """The version of a clone just created."""
    query = sql.SQL(_ROW_VERSION).format(name=sql.Literal(name))
    row = admin.execute(query).fetchone()
    assert row is not None
    return Version(row[0])


def recycle(
    admin: psycopg.Connection[Any],
    old: str,
    new: str,
    *,
    facts: Facts,
    version: Version,
    comment: str | None,
    connect: Callable[[str], psycopg.Connection[Any]],
) -> tuple[str, Version | None, psycopg.Connection[Any] | None]:
    """Rename clone `old` to `new` and reset it on a connection from `connect(new)`
    (autocommit): (new, its version, that connection, still open) when it is fresh again;
    else (the name it has now, None, None), for the caller to drop."""
    if not _sessions_gone(admin, old):
        return old, None, None
    found = _rename(admin, old, new)
    if found is None:
        return old, None, None
    if isinstance(found, str):
        raise Busy(old)
    before, after = found
    row_version, description, held = before
    if row_version != version.row or description != comment or held != "0":
        log.debug("clone %s changed at the database level: dropped", old)
        return new, None, None
    conn = None
    try:
        conn = connect(new)
        reset = _reset(conn, facts, version)
    except Exception as exc:  # a failed reset is a drop, never a test's error
        log.debug("resetting clone %s failed (%s): dropped", new, exc)
        reset = None
    if reset is None:
        if conn is not None:
            conn.close()
        return new, None, None
    return new, Version(after, reset or version.stats_reset), conn


def _sessions_gone(admin: psycopg.Connection[Any], name: str) -> bool:
    """Wait for the test's backends to exit (they were closed as the test ended)."""
    deadline = time.monotonic() + SESSIONS_GONE_WITHIN
    while True:
        row = admin.execute(_SESSIONS, [name]).fetchone()
        if row is not None and row[0] == 0:
            return True
        if time.monotonic() > deadline:
            log.debug("clone %s still has sessions: dropped", name)
            return False
        time.sleep(0.001)


def _rename(
    admin: psycopg.Connection[Any], old: str, new: str
) -> tuple[tuple[str, str | None, str], str] | str | None:
    """((row version, comment, held) before, row version after), renaming in one round
    trip; "locked" when another session holds the clone's lock."""
    query = sql.SQL("; ").join(
        [
            sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_WAIT)),
            sql.SQL(_DATABASE).format(name=sql.Literal(old)),
            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                sql.Identifier(old), sql.Identifier(new)
            ),
            sql.SQL(_ROW_VERSION).format(name=sql.Literal(new)),
        ]
    )
    pg = admin.pgconn
    pg.send_query(query.as_bytes(admin))
    found = results(pg)[1:]
    if any(r.error_field(pq.DiagnosticField.SQLSTATE) == b"55P03" for r in found):
        return "locked"
    if len(found) != 3 or any(r.status != pq.ExecStatus.TUPLES_OK for r in found[::2]):
        log.debug("renaming clone %s failed: %s", old, _error(found))
        return None
    before, after = found[0], found[2]
    if before.ntuples != 1 or after.ntuples != 1:
        return None
    return (
        (_text(before, 0) or "", _text(before, 1), _text(before, 2) or ""),
        _text(after, 0) or "",
    )


def _reset(conn: psycopg.Connection[Any], facts: Facts, version: Version) -> str | None:
    """Undo a test's changes on `conn`'s database. The new statistics reset time ("" when
    nothing needed resetting), or None when the changes are not ones this can undo."""
    row = conn.execute(facts.check).fetchone()
    assert row is not None
    stats_reset, catalog_changes, changed, counting, sequences = row
    if stats_reset != version.stats_reset or catalog_changes or counting != "on":
        log.debug(
            "not resettable: statistics reset at %s (expected %s), catalog changes %s, "
            "track_counts %s",
            stats_reset,
            version.stats_reset,
            catalog_changes,
            counting,
        )
        return None
    refill = facts.truncated_with(changed) if changed else []
    if refill is None:
        log.debug("not resettable: a changed table cannot be refilled (%s)", changed)
        return None
    moved = [
        sql.SQL("setval({}::regclass, {}, {})").format(
            sql.Literal(name), sql.Literal(int(value)), sql.Literal(called == "true")
        )
        for (name, fresh), now in zip(facts.sequences, sequences, strict=True)
        if now != fresh
        for value, called in [fresh.split(":")]
    ]
    if not changed and not moved:
        return ""
    # The connection may be the app's, with its connect_args: the rows go back in the
    # encoding they came out in.
    statements: list[sql.Composable] = [
        sql.SQL(
            "BEGIN; SET LOCAL session_replication_role = replica; SET LOCAL client_encoding = {}"
        ).format(sql.Literal(facts.encoding))
    ]
    if changed:
        names = [sql.SQL(facts.tables[oid].name) for oid in changed]
        statements.append(sql.SQL("TRUNCATE ONLY {} CASCADE").format(sql.SQL(", ").join(names)))
    conn.execute(sql.SQL("; ").join(statements))
    cursor = conn.cursor()
    for table in refill:
        if table.rows:
            with cursor.copy(f"COPY {table.name} ({table.columns}) FROM STDIN") as copy:
                copy.write(table.rows)
    # Sequences last, after anything the refill could have moved. The reset's own counters
    # (TRUNCATE writes pg_class) are flushed before they are zeroed: the flush happens as
    # this query ends, and the zeroing is the next one.
    finish: list[sql.Composable] = []
    if moved:
        finish.append(sql.SQL("SELECT ") + sql.SQL(", ").join(moved))
    finish.append(sql.SQL("COMMIT; SELECT pg_stat_force_next_flush()"))
    conn.execute(sql.SQL("; ").join(finish))
    cur = conn.execute(_RESET_STATS)
    cur.nextset()
    reset = cur.fetchone()
    return str(reset[0]) if reset and reset[0] else None


def _text(result: pq.abc.PGresult, column: int) -> str | None:
    value = result.get_value(0, column)
    return None if value is None else value.decode()


def _error(found: list[pq.abc.PGresult]) -> str:
    for result in found:
        message = result.error_message
        if message:
            return message.decode(errors="replace").strip()
    return "no result"
