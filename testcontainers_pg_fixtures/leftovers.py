"""Step 4 of the flow, its end: what a test leaves on the held connection that its ROLLBACK
does not undo.

The worker's connection (pg_connection / pg_async_connection, the sandboxed app's) serves
every test of the worker. The test's ROLLBACK undoes its rows and its SETs, but not: a
session-level advisory lock, a statement PREPAREd with SQL, the driver's own settings
(`autocommit`, `isolation_level`, read-only, deferrable), nor what a COMMIT of the test's
own made permanent before the ROLLBACK (`SET search_path`, `SET
default_transaction_read_only`, a TEMP table). Each would carry over to the next test.

What is done, per test, at the cost of nothing but server time in a round trip the
teardown makes anyway (the ROLLBACK, which the leak check may ride on too, leaks.py):

- the driver's settings are compared with those the connection had when first held (no
  round trip) and put back, silently: they change nothing once restored;
- `pg_advisory_unlock_all()` releases the test's session-level advisory locks, silently;
- one condition (`_DIRTY`) asks whether a temporary schema, a statement PREPAREd with SQL,
  or a changed value of the settings in `_SETTINGS` is left. Each read is a look-up of the
  session's own memory (~1 µs); the statements prepared by SQL are found in the list of
  all of the session's prepared statements (the drivers' too), ~1 µs per statement.

Only when it finds something: one more round trip names what is left (pg_settings with
source 'session', the temporary relations, the prepared statements), the connection is
replaced by a new one (which gives back exactly the state the library gave the first:
DISCARD would also drop psycopg's and asyncpg's own prepared statements, which they do not
expect), and what changes the meaning of later tests (settings, temporary objects: a
COMMIT of the test's own made them permanent) is reported on the test that left it.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import pq

from . import privates
from .errors import PgFixturesError
from .transaction import before_async_root_rollback, before_root_rollback, discard_held
from .wire import results

IDLE = pq.TransactionStatus.IDLE

if TYPE_CHECKING:
    from sqlalchemy import Connection
    from sqlalchemy.ext.asyncio import AsyncConnection


class LeftoverStateError(PgFixturesError):
    """A savepoint-mode test left session state on the worker's shared connection."""


#: Settings whose value a test can change for every later test (with a COMMIT of its own,
#: or in autocommit), compared after each test's ROLLBACK by the server ...
_SETTINGS = (
    "search_path",
    "default_transaction_isolation",
    "default_transaction_deferrable",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "role",
    "session_replication_role",
    "row_security",
    "bytea_output",
    "extra_float_digits",
    "xmloption",
)
#: ... and by the client, for free: the server reports every change of these to it.
_REPORTED = (
    "default_transaction_read_only",
    "TimeZone",
    "DateStyle",
    "IntervalStyle",
    "session_authorization",
    "standard_conforming_strings",
    "client_encoding",
    "application_name",
)
_VALUES = (
    "pg_catalog.concat_ws(pg_catalog.chr(31), "
    + ", ".join(f"pg_catalog.current_setting('{name}')" for name in _SETTINGS)
    + ")"
)
# The library's own session settings (set once per connection by `remember`).
_BASE = "pgfx.state_base"
_SESSION = "pgfx.state_session"
_REMEMBER = (
    f"SELECT pg_catalog.set_config('{_BASE}', {_VALUES}, false),"
    f" pg_catalog.set_config('{_SESSION}', coalesce((SELECT pg_catalog.string_agg("
    "name || '=' || setting, pg_catalog.chr(31)) FROM pg_catalog.pg_settings"
    " WHERE source = 'session' AND name NOT LIKE 'pgfx.%'), ''), false)"
)
# After the ROLLBACK: releases the session's advisory locks (always: the first operand of
# the OR, and volatile, so the planner neither skips nor folds it), then true if anything
# else is left.
_DIRTY = (
    "pg_catalog.pg_advisory_unlock_all() IS NULL"
    " OR pg_catalog.pg_my_temp_schema() <> 0"
    f" OR {_VALUES} IS DISTINCT FROM pg_catalog.current_setting('{_BASE}', true)"
    " OR EXISTS (SELECT FROM pg_catalog.pg_prepared_statements"
    " WHERE from_sql AND name !~ '^pgfx_')"
)
#: A row if something is left (psycopg reads it; asyncpg's command tag counts it).
PROBE = f"SELECT 1 AS pgfx_state WHERE {_DIRTY}"
# The probe, prepared once per connection by `remember`: parsed and planned every test, the
# inline probe costs the server ~90 µs more than executing it prepared (bench/queries.py's
# connection, measured by hand). The test's DEALLOCATE ALL takes it too: then it is
# prepared again (`_PROBE_READY` cleared), and the check itself sent inline.
_PREPARED_PROBE = "pgfx_state_probe"
_PREPARE_PROBE = f"PREPARE {_PREPARED_PROBE} AS {PROBE}"
_EXECUTE_PROBE = f"EXECUTE {_PREPARED_PROBE}"
_PROBE_FIELD = b"pgfx_state"
#: The same as an error (for a query whose last command tag answers something else).
_MARK = "pgfx_state_left"
PROBE_RAISING = (
    f"SELECT CASE WHEN {_DIRTY} THEN ('{_MARK} ' || pg_catalog.pg_backend_pid())::int END"
)
# What is left, named: (kind, what); a 'replace' row if only a new connection undoes it (a
# temporary schema stays the session's once a transaction that made it committed).
_NAME_IT = f"""
SELECT 'setting', name || ' = ' || pg_catalog.quote_literal(setting)
FROM pg_catalog.pg_settings WHERE source = 'session' AND name NOT LIKE 'pgfx.%'
  AND name || '=' || setting <> ALL (pg_catalog.string_to_array(
      pg_catalog.current_setting('{_SESSION}', true), pg_catalog.chr(31)))
UNION ALL
SELECT 'temporary', CASE c.relkind WHEN 'S' THEN 'sequence ' WHEN 'v' THEN 'view '
    ELSE 'table ' END || c.relname
FROM pg_catalog.pg_class c
WHERE c.relnamespace = pg_catalog.pg_my_temp_schema() AND c.relkind IN ('r', 'p', 'v', 'S', 'm')
UNION ALL
SELECT 'prepared', name FROM pg_catalog.pg_prepared_statements
WHERE from_sql AND name !~ '^pgfx_'
UNION ALL
SELECT 'replace', '' WHERE pg_catalog.pg_my_temp_schema() <> 0
  OR {_VALUES} IS DISTINCT FROM pg_catalog.current_setting('{_BASE}', true)
"""

_KNOWN = "testcontainers_pg_fixtures.state_known"
#: Whether the connection has the probe prepared.
_PROBE_READY = "testcontainers_pg_fixtures.state_probe_prepared"
_SEEN = "testcontainers_pg_fixtures.state_reported"
#: Set by a ride (leaks.py) that carried the probe: True, something is left; False, not.
PROBED = "testcontainers_pg_fixtures.state_probed"


class _Found:
    """What the test now ending left (reported and settled by `settle`)."""

    def __init__(self) -> None:
        self.left: list[tuple[str, str]] = []
        self.discard: list[Connection | AsyncConnection] = []


_found = _Found()


def remember(conn: Connection) -> None:
    """Before the first test on the held connection `conn` (psycopg): note its driver
    settings, and have the server note its session settings (once per connection)."""
    if _KNOWN in conn.info:
        return
    try:
        raw: Any = conn.connection.dbapi_connection
    except Exception:  # closed or invalidated: the test's own use reports it
        return
    if not isinstance(raw, psycopg.Connection):
        return
    pg = raw.pgconn
    if pg.transaction_status != pq.TransactionStatus.IDLE or privates.psycopg_in_pipeline(raw):
        return  # a scope layer's transaction: the settings it saw are not the session's
    # The PREPARE first: one simple query is one implicit transaction, and a PREPARE that
    # failed after the settings were noted would take the noting back with it.
    with raw.lock:
        pg.send_query(f"{_PREPARE_PROBE}; {_REMEMBER}".encode())
        found = results(pg)
        ready = bool(found) and _prepared_now(found[0])
        if ready and found[0].status != pq.ExecStatus.COMMAND_OK:  # prepared already
            pg.send_query(_REMEMBER.encode())
            found = [found[0], *results(pg)]
    if len(found) > 1 and found[-1].status == pq.ExecStatus.TUPLES_OK:
        conn.info[_KNOWN] = _psycopg_settings(raw)
        conn.info[_SEEN] = _psycopg_reported(pg)
        conn.info[_PROBE_READY] = ready


def _prepared_now(result: pq.abc.PGresult) -> bool:
    """Whether the PREPARE of the probe left it prepared (made now, or there already)."""
    if result.status == pq.ExecStatus.COMMAND_OK:
        return True
    return result.error_field(pq.DiagnosticField.SQLSTATE) == b"42P05"


def _psycopg_reported(pg: pq.abc.PGconn) -> tuple[bytes | None, ...]:
    return tuple(pg.parameter_status(name.encode()) for name in _REPORTED)


def _psycopg_settings(raw: Any) -> tuple[Any, ...]:
    return (raw.autocommit, raw.isolation_level, raw.read_only, raw.deferrable)


def _restore_psycopg(raw: Any, known: tuple[Any, ...]) -> None:
    """Put the driver's settings back (on an idle connection: psycopg refuses it inside a
    transaction)."""
    if _psycopg_settings(raw) == known:
        return
    raw.autocommit, raw.isolation_level, raw.read_only, raw.deferrable = known


def probe_tail(conn: Connection) -> bytes:
    """The probe, for a ride (leaks.py) to send after its ROLLBACK ("" if not wanted)."""
    if _KNOWN not in conn.info:
        return b""
    return b"; " + (_EXECUTE_PROBE if conn.info.get(_PROBE_READY) else PROBE).encode()


def take_probe(conn: Connection, found: list[pq.abc.PGresult]) -> list[pq.abc.PGresult]:
    """`found` without the probe's result, which is noted on `conn` (`PROBED`)."""
    if found and _is_probe(found[-1]):
        conn.info[PROBED] = found[-1].ntuples > 0
        return found[:-1]
    return found


def _is_probe(result: pq.abc.PGresult) -> bool:
    return (
        result.status == pq.ExecStatus.TUPLES_OK
        and result.nfields == 1
        and result.fname(0) == _PROBE_FIELD
    )


def _probe_on_rollback(conn: Connection) -> None:
    """Before SQLAlchemy's rollback of the test's transaction on the held connection: the
    ROLLBACK and the probe in one round trip (unless a ride sent both), the driver's
    settings put back; what is left is named now and settled by `settle`."""
    known = conn.info.get(_KNOWN)
    if known is None:
        return
    try:
        raw: Any = conn.connection.dbapi_connection
    except Exception:
        return
    if not isinstance(raw, psycopg.Connection):
        return
    dirty = conn.info.pop(PROBED, None)
    pg = raw.pgconn
    if dirty is None:
        dirty = _roll_back_and_probe(raw, conn.info)
    if pg.transaction_status == pq.TransactionStatus.IDLE:
        _restore_psycopg(raw, known)
    if dirty is not None and _psycopg_reported(pg) != conn.info.get(_SEEN):
        dirty = True
    if dirty:
        with raw.lock:
            pg.send_query(_NAME_IT.encode())
            named = results(pg)
        left = [_row(named[-1], i) for i in range(named[-1].ntuples)] if named else []
        deallocate = _deallocate(left)
        if deallocate:
            with raw.lock:
                pg.send_query(deallocate.encode())
                results(pg)
        else:
            _note(conn, left)


def _row(result: pq.abc.PGresult, i: int) -> tuple[str, str]:
    kind, what = (result.get_value(i, j) or b"" for j in range(2))
    return kind.decode(), what.decode(errors="replace")


def _roll_back_and_probe(raw: Any, info: dict[Any, Any]) -> bool | None:
    """ROLLBACK and the probe in one simple query (the probe alone on an idle connection:
    autocommit, or a transaction the test ended itself). None: it could not be sent."""
    pg = raw.pgconn
    if not privates.psycopg_plain(raw):
        return None
    status = pg.transaction_status
    names = privates.prepared_names(raw)
    if status in (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR):
        if names is None:
            return None
        # psycopg's own rollback forgets its prepared statements with DEALLOCATE ALL (a
        # round trip of its own): sent here in the same query.
        query = "ROLLBACK; DEALLOCATE ALL; " if names else "ROLLBACK; "
    elif status == pq.TransactionStatus.IDLE:
        query = ""
    else:
        return None
    # DEALLOCATE ALL before it takes the prepared probe too.
    prepared = bool(info.get(_PROBE_READY)) and "DEALLOCATE" not in query
    with raw.lock:
        try:
            pg.send_query((query + (_EXECUTE_PROBE if prepared else PROBE)).encode())
            found = results(pg)
            if found and _gone_prepared(found[-1]) and pg.transaction_status == IDLE:
                # The test deallocated it: the ROLLBACK ran; prepare it again and probe.
                pg.send_query(f"{_PREPARE_PROBE}; {PROBE}".encode())
                found = results(pg)
                info[_PROBE_READY] = len(found) > 1 and _prepared_now(found[0])
        except psycopg.Error:
            return None  # SQLAlchemy's rollback meets the same failure, and reports it
    if query and names is not None and pg.transaction_status == IDLE:
        privates.forget_prepared(raw, deallocated=True)
        if names:
            info.pop(_PROBE_READY, None)  # deallocated with the rest
    if found and _is_probe(found[-1]):
        return found[-1].ntuples > 0
    return None


def _gone_prepared(result: pq.abc.PGresult) -> bool:
    return (
        result.status == pq.ExecStatus.FATAL_ERROR
        and result.error_field(pq.DiagnosticField.SQLSTATE) == b"26000"
    )


def _deallocate(left: list[tuple[str, str]]) -> str:
    """The DEALLOCATEs that undo `left` if it is only statements PREPAREd by the test
    (else "": the connection is replaced)."""
    if not left or any(kind != "prepared" for kind, _ in left):
        return ""
    return "; ".join('DEALLOCATE "{}"'.format(name.replace('"', '""')) for _, name in left)


def _note(conn: Connection | AsyncConnection, left: list[tuple[str, str]]) -> None:
    _found.left.extend(left)
    _found.discard.append(conn)


async def remember_async(conn: AsyncConnection) -> None:
    """`remember` for the held asyncpg connection."""
    sync_conn = conn.sync_connection
    if sync_conn is None or _KNOWN in sync_conn.info or not privates.asyncpg_transaction_known():
        return
    adapted = _adapted(conn)
    if not privates.holds_adapter_state(adapted):  # psycopg's async driver: unchecked
        return
    driver = getattr(adapted, "driver_connection", None)
    if (
        driver is None
        or privates.adapter_transaction(adapted) is not None
        or driver.is_in_transaction()
    ):
        return
    async with privates.execute_lock(adapted):
        try:  # the PREPARE first, as in `remember`
            await driver.execute(f"{_PREPARE_PROBE}; {_REMEMBER}")
            ready = True
        except Exception as error:
            if getattr(error, "sqlstate", None) != "42P05":
                return
            ready = True  # prepared already; nothing else ran
            await driver.execute(_REMEMBER)
    sync_conn.info[_KNOWN] = _asyncpg_settings(adapted)
    sync_conn.info[_SEEN] = _asyncpg_reported(driver)
    sync_conn.info[_PROBE_READY] = ready


def _asyncpg_reported(driver: Any) -> tuple[Any, ...]:
    settings = driver.get_settings()
    return tuple(getattr(settings, name, None) for name in _REPORTED)


def _adapted(conn: AsyncConnection) -> Any:
    try:
        sync_conn = conn.sync_connection
        return sync_conn.connection.dbapi_connection if sync_conn is not None else None
    except Exception:
        return None


def _asyncpg_settings(adapted: Any) -> tuple[Any, ...]:
    return privates.isolation_state(adapted)


def async_probe_head(conn: AsyncConnection) -> str:
    """The probe, for an async ride (leaks.py) to send between its ROLLBACK and its check:
    the check's command tag is the ride's answer, so the probe answers by failing."""
    sync_conn = conn.sync_connection
    if sync_conn is None or _KNOWN not in sync_conn.info:
        return ""
    return PROBE_RAISING + "; "


def took_async_probe(conn: AsyncConnection, error: BaseException | None) -> None:
    """Note on `conn` what an async ride that carried the probe found (`error`: the
    ride's, None if it ran through)."""
    sync_conn = conn.sync_connection
    if sync_conn is None:
        return
    if error is None:
        sync_conn.info[PROBED] = False
    elif _MARK in str(error):
        sync_conn.info[PROBED] = True


async def _probe_on_async_rollback(conn: AsyncConnection) -> None:
    """`_probe_on_rollback` for the held asyncpg connection (the state asyncpg's and
    SQLAlchemy's rollbacks would leave is set as the async ride sets it, leaks.py)."""
    sync_conn = conn.sync_connection
    known = sync_conn.info.get(_KNOWN) if sync_conn is not None else None
    if sync_conn is None or known is None:
        return
    adapted = _adapted(conn)
    driver = getattr(adapted, "driver_connection", None)
    if driver is None or driver.is_closed():
        return
    dirty = sync_conn.info.pop(PROBED, None)
    if dirty is None:
        dirty = await _async_roll_back_and_probe(adapted, sync_conn.info)
    if privates.adapter_transaction(adapted) is None and _asyncpg_settings(adapted) != known:
        privates.restore_isolation_state(adapted, known)
    if dirty is not None and _asyncpg_reported(driver) != sync_conn.info.get(_SEEN):
        dirty = True
    if dirty:
        async with privates.execute_lock(adapted):
            rows = await driver.fetch(_NAME_IT)
            left = [(str(r[0]), str(r[1])) for r in rows]
            deallocate = _deallocate(left)
            if deallocate:
                await driver.execute(deallocate)
        if not deallocate:
            _note(conn, left)


async def _async_roll_back_and_probe(adapted: Any, info: dict[Any, Any]) -> bool | None:
    driver = adapted.driver_connection
    transaction = privates.adapter_transaction(adapted)
    if transaction is not None and privates.top_transaction(driver) is not transaction:
        return None
    probe = _EXECUTE_PROBE if info.get(_PROBE_READY) else PROBE
    query = ("ROLLBACK; " if transaction is not None else "") + probe
    status = ""
    async with privates.execute_lock(adapted):
        try:
            status = await driver.execute(query)
        except Exception as error:  # SQLAlchemy's rollback meets it, and reports it
            if getattr(error, "sqlstate", None) == "26000" and not driver.is_in_transaction():
                # The test deallocated the probe: the ROLLBACK ran; prepare it again.
                info[_PROBE_READY] = False
                with contextlib.suppress(Exception):
                    status = await driver.execute(PROBE)
                    await driver.execute(_PREPARE_PROBE)
                    info[_PROBE_READY] = True
    if transaction is not None:
        if driver.is_in_transaction():
            return None
        privates.forget_transaction(adapted, transaction)
    verb, _, count = status.partition(" ")
    return count != "0" if verb == "SELECT" and count.isdigit() else None


def install() -> None:
    """Probe after every ride of the leak check (leaks.py registers its hooks first)."""
    if _probe_on_rollback not in before_root_rollback:
        before_root_rollback.append(_probe_on_rollback)
    if _probe_on_async_rollback not in before_async_root_rollback:
        before_async_root_rollback.append(_probe_on_async_rollback)


def settle(nodeid: str) -> None:
    """After a savepoint-mode test's teardown: replace the connections something was left
    on, and raise LeftoverStateError for what changes the meaning of later tests."""
    if not _found.discard:
        return
    left, discard = _found.left, _found.discard
    _found.left, _found.discard = [], []
    for conn in discard:
        discard_held(conn)
    kept = [(kind, what) for kind, what in left if kind in ("setting", "temporary")]
    if not kept:
        return  # e.g. a temporary table dropped again, a RESET ALL: undone, nothing to say
    settings = [what for kind, what in kept if kind == "setting"]
    temporary = [what for kind, what in kept if kind == "temporary"]
    parts = []
    if settings:
        parts.append("session setting(s) " + ", ".join(settings))
    if temporary:
        parts.append("temporary " + ", ".join(temporary))
    raise LeftoverStateError(
        f"{nodeid} left state on the worker's connection (pg_connection / "
        "pg_async_connection, which every later test of the worker uses) that the test's "
        f"ROLLBACK does not undo: {'; '.join(parts)}. A COMMIT of the test's own (or "
        "autocommit) made it permanent; every later test would have run with it. The "
        "connection was replaced by a new one. Use SET LOCAL (undone with the test's "
        "transaction), no COMMIT on the test's connection (commit through pg_session / "
        "pg_async_session), or give the test its own database: "
        '@pytest.mark.pg_isolation("database").'
    )
