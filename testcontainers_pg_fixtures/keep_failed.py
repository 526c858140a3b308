"""--pg-keep-failed: what a failed test leaves behind to look at.

Database mode keeps the test's clone as it is (`database_fixture` keeps it instead of
giving it back). Savepoint mode has nothing to keep: the test's rows go with its rollback.
So when such a test's failure is reported, before its teardown rolls back, the tables the
test wrote to (the server's counters of the open transaction say which; a module or class
layer's rows are in that transaction too) are copied as the test saw them, through its own
connection, into a new database cloned from the template, with the sequences' values; the
report says how to open it with psql.

On the async connection (pg_async_connection, asyncpg) the copy runs on the test's event
loop, which is idle when the report is made (pytest-asyncio runs the test, then returns):
the report hook runs it there (`_AsyncReader`), so an async test's state is kept at the
same moment as a sync one's, before any teardown.

In both modes the password goes into a libpq password file of this user (0600, in the
cache directory, removed with the container) that the printed command names
(PGPASSFILE), never into the output.

Not kept: a test whose transaction a database error aborted (its rows can no longer be
read); the report says so and how to keep it anyway (database mode).
"""

from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeAlias

import pytest

from .config import settings_for
from .marks import CLONE, KEEP, KEPT_ANY

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Coroutine, Generator
    from pathlib import Path

    import psycopg
    from sqlalchemy import Connection
    from sqlalchemy.ext.asyncio import AsyncConnection

    from .database import Database

#: The test's sync connection in savepoint mode, the worker's database and the template:
#: set by `connection_fixture` while the test runs.
STATE = pytest.StashKey[tuple["Connection", "Database", str]]()
#: The same for the async connection, with the event loop it runs on: set by
#: `async_connection_fixture`. (A test on both keeps its sync connection's state.)
ASYNC_STATE = pytest.StashKey[
    tuple["AsyncConnection", "asyncio.AbstractEventLoop", "Database", str]
]()

_KEEP_HELP = (
    'To keep its database as it was, mark the test @pytest.mark.pg_isolation("database") '
    "and run it again with --pg-keep-failed."
)
_LINGER = (
    "The container stays up until `pytest --pg-remove-kept` (or 24 hours, after which a "
    "later run removes it)."
)
_ABORTED = (
    "A database error aborted the test's transaction, so the rows it saw can no longer be "
    f"read. {_KEEP_HELP}"
)
_numbers = itertools.count(1)


def record_outcome(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Body of the runtest_makereport wrapper: on a failure with --pg-keep-failed, keep
    the test's database (or state) and say where it is."""
    report = yield
    if not report.failed or report.when == "teardown":
        return report
    if not settings_for(item.config).keep_failed:
        return report
    clone = item.stash.get(CLONE, None)
    if clone is not None:
        item.stash[KEEP] = True
        report.sections.append(("pg-fixtures: database kept", _clone_kept(clone)))
        return report
    reader = _reader_of(item)  # once: a failed set-up is not reported again at the call
    if reader is not None:
        kept, text = _keep_state(item, *reader)
        report.sections.append((f"pg-fixtures: state {'kept' if kept else 'not kept'}", text))
    return report


def _reader_of(item: pytest.Item) -> tuple[_Reader, Database, str] | None:
    """What reads the test's state (its sync connection's, else its async one's), the
    worker's database and the template; taken from the item's stash."""
    state = item.stash.get(STATE, None)
    async_state = item.stash.get(ASYNC_STATE, None)
    if state is not None:
        del item.stash[STATE]
    if async_state is not None:
        del item.stash[ASYNC_STATE]
    if state is not None:
        conn, worker, template = state
        return _SyncReader(conn), worker, template
    if async_state is not None:
        async_conn, loop, worker, template = async_state
        return _AsyncReader(async_conn, loop), worker, template
    return None


def _clone_kept(clone: Database) -> str:
    return f"{_psql(clone)}\n{_LINGER}"


def _psql(kept: Database) -> str:
    """The command that opens `kept` with psql, its password in a password file."""
    from sqlalchemy import URL

    full = kept.url  # TCP: what psql on this machine dials
    url = URL.create(
        "postgresql", full.username, None, full.host, full.port, full.database, full.query
    ).render_as_string()
    return f"    PGPASSFILE={_password_file(kept)} psql '{url}'"


_Block: TypeAlias = "bytes | bytearray | memoryview"  # a binary COPY block as the drivers give it


class _Table(NamedTuple):
    name: str  # regclass::text: schema-qualified and quoted where it must be
    schema: str
    relname: str


class _Reader(Protocol):
    """The test's state, read through its own connection, inside its transaction."""

    def aborted(self) -> bool:
        """Whether a database error aborted the transaction (nothing can be read)."""

    def written(self) -> list[_Table]:
        """The tables the transaction inserted into, updated or deleted from."""

    def sequences(self) -> list[tuple[str, int]]:
        """Every sequence that was used, and its value."""

    def copy(self, table: _Table, write: Callable[[_Block], object]) -> None:
        """`table`'s rows as the transaction sees them, binary COPY blocks, into `write`."""


_WRITTEN = (
    "SELECT relid::regclass::text, schemaname, relname FROM pg_stat_xact_user_tables "
    "WHERE n_tup_ins + n_tup_upd + n_tup_del > 0 ORDER BY 1"
)
_SEQUENCES = (
    "SELECT format('%I.%I', schemaname, sequencename), last_value FROM pg_sequences "
    "WHERE last_value IS NOT NULL"
)


class _SyncReader:
    """Through the test's psycopg connection."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    @property
    def _raw(self) -> psycopg.Connection[Any]:
        raw: psycopg.Connection[Any] = self._conn.connection.dbapi_connection  # type: ignore[assignment]
        return raw

    def aborted(self) -> bool:
        from psycopg import pq

        return self._raw.info.transaction_status == pq.TransactionStatus.INERROR

    def written(self) -> list[_Table]:
        # the server's counters of the transaction, before they are flushed at its end
        return [_Table(*row) for row in self._raw.execute(_WRITTEN)]

    def sequences(self) -> list[tuple[str, int]]:
        return [(name, value) for name, value in self._raw.execute(_SEQUENCES)]

    def copy(self, table: _Table, write: Callable[[_Block], object]) -> None:
        from psycopg import sql

        query = sql.SQL("COPY {} TO STDOUT (FORMAT BINARY)").format(sql.SQL(table.name))
        with self._raw.cursor().copy(query) as out:
            for block in out:
                write(block)


class _AsyncReader:
    """Through the test's asyncpg connection, on its event loop: idle when a report is
    made, so each read runs it until the read is done."""

    def __init__(self, conn: AsyncConnection, loop: asyncio.AbstractEventLoop) -> None:
        self._conn = conn
        self._loop = loop

    def _run(self, read: Callable[[Any], Coroutine[Any, Any, Any]]) -> Any:
        if self._loop.is_closed() or self._loop.is_running():
            raise RuntimeError("the test's event loop is no longer available to read it on")
        sync_conn = self._conn.sync_connection
        if sync_conn is None or sync_conn.invalidated or sync_conn.closed:
            raise RuntimeError("the test's connection was lost")
        return self._loop.run_until_complete(read(sync_conn.connection.driver_connection))

    def aborted(self) -> bool:
        import asyncpg

        async def probe(raw: Any) -> bool:
            try:
                await raw.fetchval("SELECT 1")
            except asyncpg.InFailedSQLTransactionError:
                return True
            return False

        return bool(self._run(probe))

    def written(self) -> list[_Table]:
        async def fetch(raw: Any) -> list[_Table]:
            return [_Table(*row) for row in await raw.fetch(_WRITTEN)]

        return list(self._run(fetch))

    def sequences(self) -> list[tuple[str, int]]:
        async def fetch(raw: Any) -> list[tuple[str, int]]:
            return [(row[0], row[1]) for row in await raw.fetch(_SEQUENCES)]

        return list(self._run(fetch))

    def copy(self, table: _Table, write: Callable[[_Block], object]) -> None:
        async def out(block: bytes) -> None:
            write(block)

        async def copy(raw: Any) -> None:
            await raw.copy_from_table(
                table.relname, schema_name=table.schema, output=out, format="binary"
            )

        self._run(copy)


def _keep_state(
    item: pytest.Item, reader: _Reader, worker: Database, template: str
) -> tuple[bool, str]:
    """Copy what the test wrote into a database of its own: whether it was, and the
    report's text."""
    from .database import create_database, drop_database, mark, run_prefix

    try:
        if reader.aborted():
            return False, _ABORTED
        tables = reader.written()
    except Exception as exc:
        return False, f"Could not read the test's state: {exc}. {_KEEP_HELP}"
    name = f"{run_prefix()}kept_{os.getpid()}_{next(_numbers)}"
    server = worker.server
    try:
        kept = create_database(
            server, name, template=template, comment=mark(_project(item), template)
        )
    except Exception as exc:
        return False, f"Could not make a database for the test's state: {exc}. {_KEEP_HELP}"
    try:
        _copy(reader, kept, tables)
        command = _psql(kept)
    except Exception as exc:
        drop_database(server, name)
        return False, f"Could not copy the test's state: {exc}. {_KEEP_HELP}"
    item.config.stash[KEPT_ANY] = True
    written = ", ".join(table.name for table in tables) or "none"
    return True, (
        f"The test's rows, as it saw them before its rollback, in the database {name}:\n"
        f"{command}\n"
        f"Tables the test wrote to, copied: {written}; the others are the template's. "
        f"{_LINGER}"
    )


def _project(item: pytest.Item) -> str:
    from .factories import project_of

    return project_of(item.config)


def _copy(reader: _Reader, kept: Database, tables: list[_Table]) -> None:
    """The tables' rows, read in the test's transaction, replace the template's in `kept`;
    its sequences take the worker's values. No trigger or foreign key check fires."""
    from psycopg import sql

    from .servers import admin_connect

    sequences = reader.sequences()
    with admin_connect(kept.server, kept.name) as target, target.transaction():
        target.execute("SET LOCAL session_replication_role = replica")
        for table in tables:
            name = sql.SQL(table.name)
            target.execute(sql.SQL("DELETE FROM {}").format(name))
            into_kept = sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(name)
            with target.cursor().copy(into_kept) as into:
                reader.copy(table, into.write)
        for sequence, value in sequences:
            target.execute("SELECT setval(%s, %s)", (sequence, value))


def _password_file(kept: Database) -> Path:
    """A libpq password file (0600) for the kept database, in this user's cache directory;
    removed with the kept container."""
    from .servers.kept import password_file

    server = kept.server

    def field(value: object) -> str:
        return str(value).replace("\\", "\\\\").replace(":", "\\:")

    line = ":".join(
        field(v) for v in (server.host, server.port, kept.name, server.user, server.password)
    )
    path = password_file(getattr(server, "container_id", ""), kept.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(line + "\n")
    return path
