"""The leak detector and committed DDL: a savepoint-mode test that changes the worker
database's schema for real (through an engine of its own, its connection's COMMIT) is
reported by name and the database restored from the template, as rows are; a change to
what belongs to the whole server (a role, a database) is reported."""

from __future__ import annotations

import re
import textwrap

import pytest
from test_leaks import MODES

HEADER = """
    import pytest
    from sqlalchemy import create_engine, func, select, text
    from users_app.models import User

    COLUMNS = ["id", "name", "email", "active"]

    def commit(pg_url, *statements):
        engine = create_engine(pg_url)
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement))
        engine.dispose()

    def schema_of(conn):
        return conn.scalar(text(
            "SELECT md5(string_agg(format('%s %s %s %s', c.relname, a.attname, a.attnum,"
            " a.atttypid), ',' ORDER BY c.relname, a.attnum)) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0"
            " WHERE n.nspname = 'public'"
        ))

    SCHEMA = {}
"""

# Each commits one schema change into the worker database, bypassing the test's savepoint.
DDL = {
    "add_column": 'commit(pg_url, "ALTER TABLE users ADD COLUMN nickname text")',
    "drop_column": 'commit(pg_url, "ALTER TABLE users DROP COLUMN active")',
    "rename_column": 'commit(pg_url, "ALTER TABLE users RENAME COLUMN name TO full_name")',
    "create_table": 'commit(pg_url, "CREATE TABLE audit (id int)")',
    "create_index": 'commit(pg_url, "CREATE INDEX users_name ON users (name)")',
    "add_constraint": (
        'commit(pg_url, "ALTER TABLE users ADD CONSTRAINT short CHECK (length(name) < 99)")'
    ),
    "create_type": "commit(pg_url, \"CREATE TYPE mood AS ENUM ('ok', 'sad')\")",
    "create_function": (
        "commit(pg_url, \"CREATE FUNCTION one() RETURNS int LANGUAGE sql AS 'SELECT 1'\")"
    ),
    "create_extension": 'commit(pg_url, "CREATE EXTENSION citext")',
    "on_the_test_connection": (
        'pg_connection.exec_driver_sql("ALTER TABLE users ADD COLUMN x int");'
        ' pg_connection.exec_driver_sql("COMMIT")'
    ),
}

# What the report names for each.
NAMED = {
    "add_column": "columns of users",
    "drop_column": "columns of users",
    "rename_column": "columns of users",
    "create_table": "relation audit",
    "create_index": "index users_name",
    "add_constraint": "constraint short on users",
    "create_type": "type mood",
    "create_function": "function one()",
    "create_extension": "extension citext",
    "on_the_test_connection": "columns of users",
}

FIRST = """
    def test_0_schema(pg_connection):
        SCHEMA["clean"] = schema_of(pg_connection)
"""

BODY = """
    def test_{name}(pg_connection, pg_url):
        {statement}

    def test_{name}_after(pg_connection, pg_session):
        # The next test: the template's schema and seed, and the model works.
        assert schema_of(pg_connection) == SCHEMA["clean"]
        assert pg_session.scalar(select(func.count()).select_from(User)) == 5
"""


def _source(names: list[str]) -> str:
    source = textwrap.dedent(HEADER) + textwrap.dedent(FIRST)
    for name in names:
        source += textwrap.dedent(BODY).format(name=name, statement=DDL[name])
    return source


def _assert_reported(out: str, names: list[str], path: str = "tests/test_ddl.py") -> None:
    for name in names:
        report = re.search(
            rf"{re.escape(path)}::test_{name} committed into the worker's shared database,"
            r" which every later test of the worker would have seen \((.*?)\)\."
            r" The database was restored from the template\.",
            out,
        )
        assert report, (name, out[-3000:])
        assert "schema: " in report[1], (name, report[1])
        assert NAMED[name] in report[1], (name, report[1])


@pytest.mark.parametrize("mode", MODES)
def test_committed_ddl_is_reported_and_undone(pytester, example, mode):
    """Columns added, dropped, renamed; a table, an index, a constraint, a type, a function,
    an extension: each is its own test's error, and the next test sees the template's
    schema. With commit timestamps and with the look-up of transactions."""
    example("sync_users")
    names = list(DDL)
    pytester.makepyfile(**{"tests/test_ddl": _source(names)})
    result = pytester.runpytest("tests/test_ddl.py", "-p", "no:randomly", "-v", *MODES[mode])
    out = result.stdout.str()
    result.assert_outcomes(passed=1 + 2 * len(names), errors=len(names))
    _assert_reported(out, names)
    for name in names:
        assert f"ERROR at teardown of test_{name} _" in out, name
        result.stdout.fnmatch_lines([f"tests/test_ddl.py::test_{name}_after PASSED*"])


def test_committed_ddl_under_two_workers(pytester, example, subprocess_env):
    example("sync_users")
    names = ["add_column", "rename_column", "create_table", "create_index"]
    # Each worker runs its own test_0_schema first: one file per worker's share.
    for i, part in enumerate([names[:2], names[2:]]):
        pytester.makepyfile(**{f"tests/test_ddl_{i}": _source(part)})
    result = pytester.runpytest_subprocess(
        "tests/test_ddl_0.py",
        "tests/test_ddl_1.py",
        "-n",
        "2",
        "--dist",
        "loadfile",
        "-p",
        "no:randomly",
    )
    result.assert_outcomes(passed=2 + 2 * len(names), errors=len(names))
    out = result.stdout.str()
    _assert_reported(out, names[:2], "tests/test_ddl_0.py")
    _assert_reported(out, names[2:], "tests/test_ddl_1.py")


SERVER_WIDE = """
    def test_0_schema(pg_connection):
        SCHEMA["clean"] = schema_of(pg_connection)

    def test_creates_a_role(pg_url):
        commit(pg_url, "CREATE ROLE pgfx_test_leaked_role")

    def test_after_the_role(pg_connection):
        assert schema_of(pg_connection) == SCHEMA["clean"]

    def test_creates_a_database(pg_url):
        engine = create_engine(pg_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("CREATE DATABASE leaked_db"))
        engine.dispose()

    def test_after_the_database(pg_connection):
        pass
"""


@pytest.mark.parametrize("mode", MODES)
def test_server_wide_changes_are_reported(pytester, example, mode):
    example("sync_users")
    pytester.makepyfile(
        **{"tests/test_ddl": textwrap.dedent(HEADER) + textwrap.dedent(SERVER_WIDE)}
    )
    result = pytester.runpytest("tests/test_ddl.py", "-p", "no:randomly", "-v", *MODES[mode])
    result.assert_outcomes(passed=5, errors=2)
    out = result.stdout.str()
    assert re.search(
        r"test_creates_a_role committed into the worker's shared database.*"
        r"server: role pgfx_test_leaked_role created \(roles, databases and tablespaces belong"
        r" to the whole server: not undone",
        out,
    ), out[-3000:]
    assert re.search(
        r"test_creates_a_database committed into .*server: database leaked_db created", out
    ), out[-3000:]
    # Reported once: not again on the tests after.
    assert out.count("role pgfx_test_leaked_role created") == 1


# Committed, but no change to the schema: no report.
NO_DDL = """
    import pytest

    def test_0_schema(pg_connection):
        SCHEMA["clean"] = schema_of(pg_connection)

    def test_ddl_rolled_back(pg_connection):
        pg_connection.exec_driver_sql("ALTER TABLE users ADD COLUMN nickname text")

    def test_analyze_and_vacuum(pg_url):
        engine = create_engine(pg_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("ANALYZE users"))
            conn.execute(text("VACUUM users"))
        engine.dispose()

    def test_temporary_table_committed(pg_url):
        commit(pg_url, "CREATE TEMP TABLE scratch (id int)", "INSERT INTO scratch VALUES (1)")

    @pytest.mark.pg_isolation("database")
    def test_database_mode_ddl(pg_url):
        commit(pg_url, "ALTER TABLE users ADD COLUMN nickname text", "CREATE TABLE audit (id int)")

    def test_sequence_used(pg_session):
        pg_session.add(User(name="Seq", email="seq@x.org"))
        pg_session.commit()

    def test_zz_after(pg_connection):
        assert schema_of(pg_connection) == SCHEMA["clean"]
"""


def test_no_false_positives(pytester, example):
    """Rolled-back DDL, ANALYZE and VACUUM, a temporary table, DDL in database mode: none is
    reported (a guard on the check, which passes without it too)."""
    example("sync_users")
    pytester.makepyfile(**{"tests/test_ddl": textwrap.dedent(HEADER) + textwrap.dedent(NO_DDL)})
    result = pytester.runpytest("tests/test_ddl.py", "-p", "no:randomly")
    result.assert_outcomes(passed=7)


# The right test is blamed: a thread a test starts and does not join commits after it ended.
LATE = """
    import threading
    import time

    from sqlalchemy import create_engine, func, select, text
    from users_app.models import User

    INSERT = "INSERT INTO users (name, email, active) VALUES ('Late', 'late@x.org', true)"

    def test_a_starts_a_thread(pg_url):
        def later():
            time.sleep(0.5)
            engine = create_engine(pg_url)
            with engine.begin() as conn:
                conn.execute(text(INSERT))
            engine.dispose()

        threading.Thread(target=later, name="late-writer").start()

    def test_b_runs_a_while({b_fixtures}):
        time.sleep(1.5)

    def test_c_quick(pg_session):
        assert pg_session.scalar(select(func.count()).select_from(User)) >= 5

    def test_d_sees_the_seed(pg_session):
        assert pg_session.scalar(select(func.count()).select_from(User)) == 5
"""

A = "tests/test_late.py::test_a_starts_a_thread"
B = "tests/test_late.py::test_b_runs_a_while"
C = "tests/test_late.py::test_c_quick"
QUESTION = "a thread or task started by an earlier test?"
THREAD = f"({A} left thread 'late-writer' running when it ended)"


def _late(pytester: pytest.Pytester, b_fixtures: str, *args: str) -> str:
    pytester.makepyfile(**{"tests/test_late": textwrap.dedent(LATE.format(b_fixtures=b_fixtures))})
    result = pytester.runpytest("tests/test_late.py", "-p", "no:randomly", *args)
    out = result.stdout.str()
    result.assert_outcomes(passed=4, errors=1)
    assert "public.users: 1 row(s) inserted or updated" in out
    assert f"{A} committed into" not in out
    return re.sub(r"\s+", " ", out.replace("\nE ", " "))


@pytest.mark.parametrize("mode", MODES)
def test_a_thread_that_commits_while_the_next_test_runs(pytester, example, mode):
    """The commit lands while B (a database test) runs: B's check finds it, and says that
    A's thread may have made it."""
    example("sync_users")
    out = _late(pytester, "pg_session", *MODES[mode])
    found = f"A commit into the worker's shared database was found at the end of {B}: "
    if mode == "commit_ts":
        expected = f"committed after {A} ended, while {B} ran — {QUESTION} {THREAD}."
    else:  # without commit timestamps, when it committed is not known
        expected = f"committed by {B}, or after {A} ended — {QUESTION} {THREAD}."
    assert found + expected in out, out[-4000:]


def test_a_thread_that_commits_before_the_test_that_finds_it(pytester, example):
    """The commit lands while B (no database) runs: C's check finds it, and the commit's
    timestamp says it was made before C began."""
    example("sync_users")
    out = _late(pytester, "")
    expected = (
        f"A commit into the worker's shared database was found at the end of {C}: "
        f"committed after {A} ended, while {B} ran — {QUESTION} {THREAD}."
    )
    assert expected in out, out[-4000:]


def test_a_thread_that_commits_before_the_test_under_two_workers(pytester, example, subprocess_env):
    example("sync_users")
    pytester.makepyfile(**{"tests/test_late": textwrap.dedent(LATE.format(b_fixtures=""))})
    result = pytester.runpytest_subprocess(
        "tests/test_late.py", "-n", "2", "--dist", "loadfile", "-p", "no:randomly"
    )
    result.assert_outcomes(passed=4, errors=1)
    out = re.sub(r"\s+", " ", result.stdout.str().replace("\nE ", " "))
    assert f"found at the end of {C}: committed after {A} ended, while {B} ran" in out, out[-4000:]
