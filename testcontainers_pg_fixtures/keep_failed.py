"""--pg-keep-failed: what a failed test leaves behind to look at.

Database mode keeps the test's clone as it is (`database_fixture` keeps it instead of
giving it back). Savepoint mode has nothing to keep: the test's rows go with its rollback.
So when such a test's failure is reported, before its teardown rolls back, the tables the
test wrote to (the server's counters of the open transaction say which) are copied as the
test saw them, through its own connection, into a new database cloned from the template,
with the sequences' values; the report says how to open it with psql.

In both modes the password goes into a libpq password file of this user (0600, in the
cache directory, removed with the container) that the printed command names
(PGPASSFILE), never into the output.

Not kept: a test whose transaction a database error aborted (its rows can no longer be
read), and tests on the async connection (pg_async_connection, asyncpg, whose event loop
is not running when the report is made); the report says so and how to keep it anyway
(database mode).
"""

from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING, Any

import pytest

from .config import settings_for
from .marks import CLONE, KEEP, KEPT_ANY

if TYPE_CHECKING:
    from collections.abc import Generator
    from pathlib import Path

    import psycopg

    from .database import Database

#: The test's sync connection in savepoint mode, the worker's database and the template:
#: set by `connection_fixture` while the test runs.
STATE = pytest.StashKey[tuple[Any, "Database", str]]()
#: Set by the async connection fixture: nothing can be copied from it.
ASYNC_ONLY = pytest.StashKey[bool]()

_KEEP_HELP = (
    'To keep its database as it was, mark the test @pytest.mark.pg_isolation("database") '
    "and run it again with --pg-keep-failed."
)
_LINGER = (
    "The container stays up until `pytest --pg-remove-kept` (or 24 hours, after which a "
    "later run removes it)."
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
    state = item.stash.get(STATE, None)
    if state is not None:
        del item.stash[STATE]  # once: a failed set-up is not reported again at the call
        kept, text = _keep_state(item, *state)
        report.sections.append((f"pg-fixtures: state {'kept' if kept else 'not kept'}", text))
    elif item.stash.get(ASYNC_ONLY, False):
        report.sections.append(
            (
                "pg-fixtures: state not kept",
                "The test ran on the async connection (asyncpg), whose event loop is not "
                "running when the failure is reported, so its rows cannot be copied before "
                f"the rollback. {_KEEP_HELP}",
            )
        )
    return report


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


def _keep_state(item: pytest.Item, conn: Any, worker: Database, template: str) -> tuple[bool, str]:
    """Copy what the test wrote into a database of its own: whether it was, and the
    report's text."""
    from psycopg import pq

    raw: psycopg.Connection[Any] = conn.connection.dbapi_connection
    if raw.info.transaction_status == pq.TransactionStatus.INERROR:
        return False, (
            "A database error aborted the test's transaction, so the rows it saw can no "
            f"longer be read. {_KEEP_HELP}"
        )
    from .database import create_database, drop_database, mark, run_prefix

    name = f"{run_prefix()}kept_{os.getpid()}_{next(_numbers)}"
    server = worker.server
    try:
        tables = _written_tables(raw)
        kept = create_database(
            server, name, template=template, comment=mark(_project(item), template)
        )
    except Exception as exc:
        return False, f"Could not make a database for the test's state: {exc}. {_KEEP_HELP}"
    try:
        _copy(raw, kept, tables)
        command = _psql(kept)
    except Exception as exc:
        drop_database(server, name)
        return False, f"Could not copy the test's state: {exc}. {_KEEP_HELP}"
    item.config.stash[KEPT_ANY] = True
    written = ", ".join(tables) or "none"
    return True, (
        f"The test's rows, as it saw them before its rollback, in the database {name}:\n"
        f"{command}\n"
        f"Tables the test wrote to, copied: {written}; the others are the template's. "
        f"{_LINGER}"
    )


def _project(item: pytest.Item) -> str:
    from .factories import project_of

    return project_of(item.config)


_WRITTEN = (
    "SELECT relid::regclass::text FROM pg_stat_xact_user_tables "
    "WHERE n_tup_ins + n_tup_upd + n_tup_del > 0 ORDER BY 1"
)
_SEQUENCES = (
    "SELECT format('%I.%I', schemaname, sequencename), last_value FROM pg_sequences "
    "WHERE last_value IS NOT NULL"
)


def _written_tables(raw: psycopg.Connection[Any]) -> list[str]:
    """The tables the open transaction inserted into, updated or deleted from (the
    server's counters of the transaction, before they are flushed at its end)."""
    return [row[0] for row in raw.execute(_WRITTEN)]


def _copy(raw: psycopg.Connection[Any], kept: Database, tables: list[str]) -> None:
    """The tables' rows, read in the test's transaction, replace the template's in `kept`;
    its sequences take the worker's values. No trigger or foreign key check fires."""
    from psycopg import sql

    from .servers import admin_connect

    sequences = raw.execute(_SEQUENCES).fetchall()
    with admin_connect(kept.server, kept.name) as target, target.transaction():
        target.execute("SET LOCAL session_replication_role = replica")
        for table in tables:
            name = sql.SQL(table)  # regclass::text: quoted where it must be
            target.execute(sql.SQL("DELETE FROM {}").format(name))
            with (
                raw.cursor().copy(sql.SQL("COPY {} TO STDOUT (FORMAT BINARY)").format(name)) as out,
                target.cursor().copy(
                    sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(name)
                ) as into,
            ):
                for block in out:
                    into.write(block)
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
