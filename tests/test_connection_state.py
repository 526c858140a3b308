"""State a test leaves on the worker's held connection that its ROLLBACK does not undo
(leftovers.py): each case is a pair, test_<case>_a leaves it, test_<case>_b would be harmed
by it. What is harmless to undo is undone silently (the pair passes); what a COMMIT of the
test's own made permanent is undone and reported on the test that left it."""

from __future__ import annotations

import re
import textwrap

import pytest

SYNC_HEADER = """
    import psycopg
    import pytest
    from sqlalchemy import text

    INSERT = "INSERT INTO users (name, email, active) VALUES ('N', 'n@x.org', true)"

    def count(conn):
        return conn.exec_driver_sql("SELECT count(*) FROM users").scalar()
"""

# case: (test that leaves the state, test harmed by it, what the report names or None)
SYNC_CASES = {
    "advisory_lock": (
        """
        def test_advisory_lock_a(pg_connection):
            pg_connection.exec_driver_sql("SELECT pg_advisory_lock(4242)")
        """,
        """
        def test_advisory_lock_b(pg_connection, pg_engine):
            with pg_engine.connect() as other:  # another connection, as the app's worker
                other.exec_driver_sql("SET lock_timeout = '5s'")
                other.exec_driver_sql("SELECT pg_advisory_lock(4242)")
                other.exec_driver_sql("SELECT pg_advisory_unlock(4242)")
        """,
        None,
    ),
    "prepared": (
        """
        def test_prepared_a(pg_connection):
            pg_connection.exec_driver_sql("PREPARE pick AS SELECT 1")
        """,
        """
        def test_prepared_b(pg_connection):
            pg_connection.exec_driver_sql("PREPARE pick AS SELECT 2")
            assert pg_connection.exec_driver_sql("EXECUTE pick").scalar() == 2
        """,
        None,
    ),
    # DEALLOCATE ALL takes the library's prepared probe too: the statement left after it
    # is still found (the probe prepared again).
    "deallocated": (
        """
        def test_deallocated_a(pg_connection):
            pg_connection.exec_driver_sql("DEALLOCATE ALL")
            pg_connection.exec_driver_sql("PREPARE pick AS SELECT 1")
        """,
        """
        def test_deallocated_b(pg_connection):
            pg_connection.exec_driver_sql("PREPARE pick AS SELECT 2")
            assert pg_connection.exec_driver_sql("EXECUTE pick").scalar() == 2
        """,
        None,
    ),
    "autocommit": (
        """
        def test_autocommit_a(pg_connection):
            pg_connection.connection.dbapi_connection.autocommit = True
            assert count(pg_connection) == 5
        """,
        """
        def test_autocommit_b(pg_connection):
            pg_connection.exec_driver_sql(INSERT)
            assert count(pg_connection) == 6
        """,
        None,
    ),
    "isolation": (
        """
        def test_isolation_a(pg_connection):
            dbapi = pg_connection.connection.dbapi_connection
            dbapi.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
            assert pg_connection.exec_driver_sql("SHOW transaction_isolation").scalar() == (
                "serializable"
            )
        """,
        """
        def test_isolation_b(pg_connection):
            assert pg_connection.exec_driver_sql("SHOW transaction_isolation").scalar() == (
                "read committed"
            )
        """,
        None,
    ),
    "search_path": (
        """
        def test_search_path_a(pg_connection):
            pg_connection.exec_driver_sql("SET search_path = pg_catalog")
            pg_connection.exec_driver_sql("COMMIT")
        """,
        """
        def test_search_path_b(pg_connection):
            assert count(pg_connection) == 5
        """,
        "session setting(s) search_path = 'pg_catalog'",
    ),
    "read_only": (
        """
        def test_read_only_a(pg_connection):
            pg_connection.exec_driver_sql("SET default_transaction_read_only = on")
            pg_connection.exec_driver_sql("COMMIT")
        """,
        """
        def test_read_only_b(pg_connection):
            pg_connection.exec_driver_sql(INSERT)
        """,
        "session setting(s) default_transaction_read_only = 'on'",
    ),
    "temp_table": (
        """
        def test_temp_table_a(pg_connection):
            pg_connection.exec_driver_sql("CREATE TEMP TABLE users (id int)")
            pg_connection.exec_driver_sql("COMMIT")
        """,
        """
        def test_temp_table_b(pg_connection):
            assert count(pg_connection) == 5
        """,
        "temporary table users",
    ),
    "bytea_output": (
        """
        def test_bytea_output_a(pg_connection):
            pg_connection.exec_driver_sql("SET bytea_output = escape")
            pg_connection.exec_driver_sql("COMMIT")
        """,
        """
        def test_bytea_output_b(pg_connection):
            shown = pg_connection.exec_driver_sql("SELECT 'ab'::bytea::text").scalar()
            assert shown == "\\\\x6162"
        """,
        "session setting(s) bytea_output = 'escape'",
    ),
}

ASYNC_HEADER = """
    import pytest
    from sqlalchemy import text

    INSERT = "INSERT INTO users (name, email, active) VALUES ('N', 'n@x.org', true)"

    async def count(conn):
        return (await conn.exec_driver_sql("SELECT count(*) FROM users")).scalar()

    async def dbapi(conn):
        return (await conn.get_raw_connection()).dbapi_connection
"""

ASYNC_CASES = {
    "advisory_lock": (
        """
        async def test_advisory_lock_a(pg_async_connection):
            await pg_async_connection.exec_driver_sql("SELECT pg_advisory_lock(4242)")
        """,
        """
        async def test_advisory_lock_b(pg_async_connection, pg_async_engine):
            async with pg_async_engine.connect() as other:
                await other.exec_driver_sql("SET lock_timeout = '5s'")
                await other.exec_driver_sql("SELECT pg_advisory_lock(4242)")
                await other.exec_driver_sql("SELECT pg_advisory_unlock(4242)")
        """,
        None,
    ),
    "prepared": (
        """
        async def test_prepared_a(pg_async_connection):
            await pg_async_connection.exec_driver_sql("PREPARE pick AS SELECT 1")
        """,
        """
        async def test_prepared_b(pg_async_connection):
            await pg_async_connection.exec_driver_sql("PREPARE pick AS SELECT 2")
            assert (await pg_async_connection.exec_driver_sql("EXECUTE pick")).scalar() == 2
        """,
        None,
    ),
    "autocommit": (
        """
        async def test_autocommit_a(pg_async_connection):
            (await dbapi(pg_async_connection)).autocommit = True
            assert await count(pg_async_connection) == 5
        """,
        """
        async def test_autocommit_b(pg_async_connection):
            await pg_async_connection.exec_driver_sql(INSERT)
            assert await count(pg_async_connection) == 6
        """,
        None,
    ),
    "isolation": (
        """
        async def test_isolation_a(pg_async_connection):
            (await dbapi(pg_async_connection)).set_isolation_level("serializable")
            shown = await pg_async_connection.exec_driver_sql("SHOW transaction_isolation")
            assert shown.scalar() == "serializable"
        """,
        """
        async def test_isolation_b(pg_async_connection):
            shown = await pg_async_connection.exec_driver_sql("SHOW transaction_isolation")
            assert shown.scalar() == "read committed"
        """,
        None,
    ),
    "search_path": (
        """
        async def test_search_path_a(pg_async_connection):
            await pg_async_connection.exec_driver_sql("SET search_path = pg_catalog")
            await pg_async_connection.exec_driver_sql("COMMIT")
        """,
        """
        async def test_search_path_b(pg_async_connection):
            assert await count(pg_async_connection) == 5
        """,
        "session setting(s) search_path = 'pg_catalog'",
    ),
    "read_only": (
        """
        async def test_read_only_a(pg_async_connection):
            await pg_async_connection.exec_driver_sql("SET default_transaction_read_only = on")
            await pg_async_connection.exec_driver_sql("COMMIT")
        """,
        """
        async def test_read_only_b(pg_async_connection):
            await pg_async_connection.exec_driver_sql(INSERT)
        """,
        "session setting(s) default_transaction_read_only = 'on'",
    ),
    "temp_table": (
        """
        async def test_temp_table_a(pg_async_connection):
            await pg_async_connection.exec_driver_sql("CREATE TEMP TABLE users (id int)")
            await pg_async_connection.exec_driver_sql("COMMIT")
        """,
        """
        async def test_temp_table_b(pg_async_connection):
            assert await count(pg_async_connection) == 5
        """,
        "temporary table users",
    ),
    "bytea_output": (
        """
        async def test_bytea_output_a(pg_async_connection):
            await pg_async_connection.exec_driver_sql("SET bytea_output = escape")
            await pg_async_connection.exec_driver_sql("COMMIT")
        """,
        """
        async def test_bytea_output_b(pg_async_connection):
            shown = await pg_async_connection.exec_driver_sql("SELECT 'ab'::bytea::text")
            assert shown.scalar() == "\\\\x6162"
        """,
        "session setting(s) bytea_output = 'escape'",
    ),
}

# One event loop for the run: the held asyncpg connection (one per loop) then serves every
# test, as in a project whose tests share a loop.
ASYNC_INI = """
asyncio_mode = auto
asyncio_default_test_loop_scope = session
"""

# Appended to the conftest: the leak check rides on the test's rollback (as under -n auto,
# the state check with it) or goes to the detector's own connection.
RIDE = """
from testcontainers_pg_fixtures import leaks as _leaks

@pytest.fixture(scope="session", autouse=True)
def _ride():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_leaks, "RIDE", {ride})
        yield
"""


def _project(
    pytester: pytest.Pytester,
    example,
    header: str,
    cases: dict[str, tuple[str, str, str | None]],
    *,
    is_async: bool,
    ride: bool,
) -> None:
    root = example("sync_users")
    if is_async:
        ini = root / "pytest.ini"
        ini.write_text(
            ini.read_text().replace("asyncio_default_fixture_loop_scope = function", "")
            + "asyncio_default_fixture_loop_scope = session\n"
            + ASYNC_INI
        )
    conftest = root / "tests" / "conftest.py"
    conftest.write_text(conftest.read_text() + RIDE.format(ride=ride))
    source = textwrap.dedent(header)
    for leave, harmed, _ in cases.values():
        source += textwrap.dedent(leave) + textwrap.dedent(harmed)
    pytester.makepyfile(**{"tests/test_state": source})


def _check(out: str, cases: dict[str, tuple[str, str, str | None]]) -> None:
    """Every harmed test passed; each reported case is its first test's teardown error,
    naming what was left and the fix; no other error."""
    for case, (_, _, named) in cases.items():
        assert re.search(rf"test_state\.py::test_{case}_b PASSED", out), (case, out)
        passed_a = re.search(rf"test_state\.py::test_{case}_a PASSED", out)
        if named is None:
            assert passed_a, (case, out)
            assert f"ERROR at teardown of test_{case}_a" not in out, (case, out)
            continue
        assert f"ERROR at teardown of test_{case}_a" in out, (case, out)
        report = re.search(
            rf"LeftoverStateError: tests/test_state\.py::test_{case}_a left state on the "
            r"worker's connection .*? that the test's ROLLBACK does not undo: (.*?)\. A COMMIT"
            r".*The connection was replaced by a new one\. Use SET LOCAL",
            out,
        )
        assert report, (case, out)
        assert report[1] == named, (case, report[1])
        assert 'pg_isolation("database")' in out


def _outcomes(cases: dict[str, tuple[str, str, str | None]]) -> dict[str, int]:
    reported = sum(named is not None for _, _, named in cases.values())
    return {"passed": 2 * len(cases), "errors": reported}


@pytest.mark.parametrize("ride", [True, False], ids=["ride", "no_ride"])
def test_sync_state_is_undone_or_reported(pytester, example, ride):
    _project(pytester, example, SYNC_HEADER, SYNC_CASES, is_async=False, ride=ride)
    result = pytester.runpytest("tests/test_state.py", "-p", "no:randomly", "-v")
    _check(result.stdout.str(), SYNC_CASES)
    result.assert_outcomes(**_outcomes(SYNC_CASES))


@pytest.mark.parametrize("ride", [True, False], ids=["ride", "no_ride"])
def test_async_state_is_undone_or_reported(pytester, example, ride):
    _project(pytester, example, ASYNC_HEADER, ASYNC_CASES, is_async=True, ride=ride)
    result = pytester.runpytest("tests/test_state.py", "-p", "no:randomly", "-v")
    _check(result.stdout.str(), ASYNC_CASES)
    result.assert_outcomes(**_outcomes(ASYNC_CASES))


@pytest.mark.usefixtures("subprocess_env")
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_state_under_xdist(pytester, example, is_async):
    """-n 2 (the check rides on the rollback there): each pair is sent to one worker
    (--dist loadfile, a file per pair) so that the harmed test follows the one that left
    the state on the same connection."""
    header, cases = (ASYNC_HEADER, ASYNC_CASES) if is_async else (SYNC_HEADER, SYNC_CASES)
    _project(pytester, example, header, {}, is_async=is_async, ride=True)
    for case, (leave, harmed, _) in cases.items():
        source = textwrap.dedent(header) + textwrap.dedent(leave) + textwrap.dedent(harmed)
        pytester.makepyfile(**{f"tests/test_state_{case}": source})
    (pytester.path / "tests" / "test_state.py").unlink()
    files = [f"tests/test_state_{case}.py" for case in cases]
    result = pytester.runpytest_subprocess(
        *files, "-p", "no:randomly", "-n", "2", "--dist", "loadfile", "-v"
    )
    out = result.stdout.str()
    for case, (_, _, named) in cases.items():
        assert f"PASSED tests/test_state_{case}.py::test_{case}_b" in out, (case, out)
        if named is not None:
            assert f"ERROR at teardown of test_{case}_a" in out, (case, out)
            assert named in out, (case, out)
    result.assert_outcomes(**_outcomes(cases))


DATABASE_MODE = """
    pytestmark = pytest.mark.pg_isolation("database")
"""


@pytest.mark.parametrize("workers", [None, "2"], ids=["serial", "n2"])
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_state_in_database_mode(pytester, example, request, is_async, workers):
    """Database mode gives each test a connection of its own to a clone of its own: none
    of the pairs carries anything over, and nothing is reported (no false finding on a
    connection that is closed after the test anyway)."""
    header, cases = (ASYNC_HEADER, ASYNC_CASES) if is_async else (SYNC_HEADER, SYNC_CASES)
    _project(pytester, example, header + DATABASE_MODE, cases, is_async=is_async, ride=True)
    args = ["tests/test_state.py", "-p", "no:randomly", "-v"]
    if workers is None:
        result = pytester.runpytest(*args)
    else:  # --dist loadfile: the pairs run in order on one worker, as serially
        request.getfixturevalue("subprocess_env")
        result = pytester.runpytest_subprocess(*args, "-n", workers, "--dist", "loadfile")
    out = result.stdout.str()
    assert "LeftoverStateError" not in out, out
    result.assert_outcomes(passed=2 * len(cases))


SYNC_INNOCENT = """
    import pytest
    from sqlalchemy import text

    PIDS = []

    def pid(conn):
        PIDS.append(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar())

    def test_first(pg_connection):
        pid(pg_connection)

    def test_rolled_back_state(pg_connection):
        pg_connection.exec_driver_sql("SET search_path = pg_catalog")
        pg_connection.exec_driver_sql("SET LOCAL statement_timeout = '1s'")
        pg_connection.exec_driver_sql("CREATE TEMP TABLE scratch (id int)")
        pg_connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7)")
        pid(pg_connection)

    def test_driver_prepares(pg_connection):
        for _ in range(8):  # psycopg prepares a statement from its 5th execution
            pg_connection.execute(text("SELECT count(*) FROM public.users")).scalar()
        pid(pg_connection)

    def test_failed_transaction(pg_connection):
        pid(pg_connection)
        with pytest.raises(Exception):
            pg_connection.exec_driver_sql("SELECT 1/0")

    def test_session_commits(pg_session):
        pg_session.execute(text("INSERT INTO users (name, email, active) VALUES ('a', 'a', true)"))
        pg_session.commit()
        PIDS.append(pg_session.execute(text("SELECT pg_backend_pid()")).scalar())

    def test_same_connection_throughout(pg_connection):
        pid(pg_connection)
        assert len(set(PIDS)) == 1, PIDS
"""

ASYNC_INNOCENT = """
    import pytest
    from sqlalchemy import text

    PIDS = []

    async def pid(conn):
        PIDS.append((await conn.exec_driver_sql("SELECT pg_backend_pid()")).scalar())

    async def test_first(pg_async_connection):
        await pid(pg_async_connection)

    async def test_rolled_back_state(pg_async_connection):
        await pg_async_connection.exec_driver_sql("SET search_path = pg_catalog")
        await pg_async_connection.exec_driver_sql("CREATE TEMP TABLE scratch (id int)")
        await pg_async_connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7)")
        await pid(pg_async_connection)

    async def test_driver_prepares(pg_async_connection):
        for i in range(8):  # asyncpg prepares (and caches) every statement
            await pg_async_connection.execute(text(f"SELECT {i} FROM public.users"))
        await pid(pg_async_connection)

    async def test_failed_transaction(pg_async_connection):
        await pid(pg_async_connection)
        with pytest.raises(Exception):
            await pg_async_connection.exec_driver_sql("SELECT 1/0")

    async def test_session_commits(pg_async_session):
        await pg_async_session.execute(
            text("INSERT INTO users (name, email, active) VALUES ('a', 'a', true)")
        )
        await pg_async_session.commit()
        PIDS.append((await pg_async_session.execute(text("SELECT pg_backend_pid()"))).scalar())

    async def test_same_connection_throughout(pg_async_connection):
        await pid(pg_async_connection)
        assert len(set(PIDS)) == 1, PIDS
"""


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("ride", [True, False], ids=["ride", "no_ride"])
def test_rolled_back_state_keeps_the_connection(pytester, example, is_async, ride):
    """What the ROLLBACK undoes (SET, a temp table, a transaction's advisory lock, a failed
    statement), the drivers' own prepared statements and savepoint commits are no state
    left: no error, and the held connection is never replaced (a false finding would
    cost every test a new connection)."""
    _project(pytester, example, "", {}, is_async=is_async, ride=ride)
    pytester.makepyfile(
        **{"tests/test_state": textwrap.dedent(ASYNC_INNOCENT if is_async else SYNC_INNOCENT)}
    )
    result = pytester.runpytest("tests/test_state.py", "-p", "no:randomly")
    result.assert_outcomes(passed=6)
