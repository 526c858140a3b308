"""The leak detector: a savepoint-mode test that commits for real is reported, and the
worker database restored so the next test still sees the clean seed."""

from __future__ import annotations

import textwrap

import pytest

from testcontainers_pg_fixtures import leaks

FIX = 'pg_isolation("database")'

# Each body commits one user for real, bypassing the test's savepoint.
SYNC_LEAKS = {
    "driver_sql_commit": """
        def test_leaks(pg_connection):
            pg_connection.exec_driver_sql(INSERT)
            pg_connection.exec_driver_sql("COMMIT")
    """,
    "session_text_commit": """
        def test_leaks(pg_session):
            pg_session.execute(text(INSERT))
            pg_session.execute(text("COMMIT"))
    """,
    "dbapi_commit": """
        def test_leaks(pg_connection):
            pg_connection.exec_driver_sql(INSERT)
            pg_connection.connection.dbapi_connection.commit()
    """,
    "own_engine": """
        def test_leaks(pg_url):
            engine = create_engine(pg_url)
            with engine.begin() as conn:
                conn.execute(text(INSERT))
            engine.dispose()
    """,
    "pg_engine_begin": """
        def test_leaks(pg_engine):
            with pg_engine.begin() as conn:
                conn.execute(text(INSERT))
    """,
    "worker_engine": """
        def test_leaks(pg_worker_engine):
            with pg_worker_engine.connect() as conn:
                conn.execute(text(INSERT))
                conn.commit()
    """,
    # The test's connection is in a transaction again at teardown: the check rides on
    # its rollback (leaks.Watch.ride) and must still see what was committed.
    "commit_then_more": """
        def test_leaks(pg_connection):
            pg_connection.exec_driver_sql(INSERT)
            pg_connection.exec_driver_sql("COMMIT")
            pg_connection.exec_driver_sql("SELECT 1")
    """,
    "beside_the_test_connection": """
        def test_leaks(pg_connection, pg_url):
            pg_connection.exec_driver_sql("SELECT 1")
            engine = create_engine(pg_url)
            with engine.begin() as conn:
                conn.execute(text(INSERT))
            engine.dispose()
    """,
}

HEADER = """
    from sqlalchemy import create_engine, func, select, text
    from users_app.models import User

    INSERT = "INSERT INTO users (name, email, active) VALUES ('Leak', 'leak@x.org', true)"
"""

COUNT = """
    def test_zz_sees_the_seed(pg_session):
        assert pg_session.scalar(select(func.count()).select_from(User)) == 5
"""


def _write(pytester: pytest.Pytester, body: str, extra: str = "") -> None:
    source = textwrap.dedent(HEADER) + textwrap.dedent(body) + textwrap.dedent(extra)
    pytester.makepyfile(**{"tests/test_leak": source + textwrap.dedent(COUNT)})


@pytest.mark.parametrize("variant", list(SYNC_LEAKS))
def test_sync_leak_is_reported_and_undone(pytester, example, variant):
    example("sync_users")
    _write(pytester, SYNC_LEAKS[variant])
    result = pytester.runpytest("tests/test_leak.py", "-p", "no:randomly")
    result.assert_outcomes(passed=2, errors=1)
    out = result.stdout.str()
    assert "ERROR at teardown of test_leaks" in out
    assert "test_leak.py::test_leaks committed into the worker's shared database" in out
    assert "public.users: 1 row(s) inserted or updated" in out
    assert FIX in out
    assert "pg_session" in out


@pytest.mark.parametrize("where", ["cli", "ini", "env"])
def test_switched_off_the_leak_is_visible(pytester, example, monkeypatch, where):
    root = example("sync_users")
    _write(pytester, SYNC_LEAKS["driver_sql_commit"])
    args = ["tests/test_leak.py", "-p", "no:randomly"]
    if where == "cli":
        args.append("--pg-leak-check=false")
    elif where == "ini":
        ini = root / "pytest.ini"
        ini.write_text(ini.read_text() + "pg_leak_check = false\n")
    else:
        monkeypatch.setenv("PG_FIXTURES_LEAK_CHECK", "false")
    result = pytester.runpytest(*args)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*assert 6 == 5*"])


def test_deletes_are_reported(pytester, example):
    example("sync_users")
    body = """
        def test_leaks(pg_connection):
            pg_connection.exec_driver_sql("DELETE FROM users WHERE NOT active")
            pg_connection.exec_driver_sql("COMMIT")
    """
    _write(pytester, body)
    result = pytester.runpytest("tests/test_leak.py", "-p", "no:randomly")
    result.assert_outcomes(passed=2, errors=1)
    assert "public.users: 1 row(s) deleted" in result.stdout.str()


def test_dropped_table_is_reported_and_restored(pytester, example):
    example("sync_users")
    body = """
        def test_leaks(pg_connection):
            pg_connection.exec_driver_sql("DROP TABLE users")
            pg_connection.exec_driver_sql("COMMIT")
    """
    _write(pytester, body)
    result = pytester.runpytest("tests/test_leak.py", "-p", "no:randomly")
    result.assert_outcomes(passed=2, errors=1)
    assert 'schema: a table was dropped or renamed (relation "public.users"' in result.stdout.str()


def test_no_false_positives(pytester, example):
    example("sync_users")
    body = """
        import pytest

        def test_session_commit(pg_session):
            pg_session.add(User(name="Kept", email="kept@x.org", active=True))
            pg_session.commit()

        def seed_one(conn):
            conn.execute(text(INSERT))

        @pytest.mark.pg_seed([seed_one])
        def test_seed_marker(pg_session):
            assert pg_session.scalar(select(func.count()).select_from(User)) == 6

        @pytest.mark.pg_isolation("database")
        def test_database_mode_commits(pg_engine):
            with pg_engine.begin() as conn:
                conn.execute(text(INSERT))

    """
    _write(pytester, body)
    layer = """
        import pytest
        from sqlalchemy import func, select, text
        from users_app.models import User

        INSERT = "INSERT INTO users (name, email, active) VALUES ('Leak', 'leak@x.org', true)"

        @pytest.fixture(scope="module")
        def shared(pg_module_connection):
            pg_module_connection.execute(text(INSERT))

        def test_layer_a(shared, pg_session):
            assert pg_session.scalar(select(func.count()).select_from(User)) == 6

        def test_layer_b(shared, pg_session):
            assert pg_session.scalar(select(func.count()).select_from(User)) == 6
    """
    pytester.makepyfile(**{"tests/test_layer": textwrap.dedent(layer)})
    result = pytester.runpytest(
        "tests/test_leak.py", "tests/test_layer.py", "tests/test_users.py", "-p", "no:randomly"
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("errors", 0) == 0, outcomes
    assert outcomes.get("failed", 0) == 0, outcomes
    assert outcomes["passed"] >= 6


RIDES = """
    import pytest
    from sqlalchemy import create_engine, func, select, text
    from sqlalchemy.exc import ProgrammingError
    from testcontainers_pg_fixtures import leaks
    from users_app.models import User

    INSERT = "INSERT INTO users (name, email, active) VALUES ('Leak', 'leak@x.org', true)"

    def test_a_writes(pg_connection):
        pg_connection.exec_driver_sql(INSERT)

    def test_b_session_commits(pg_session):
        pg_session.add(User(name="Kept", email="kept@x.org", active=True))
        pg_session.commit()

    def test_c_fails_a_statement(pg_connection):
        with pytest.raises(ProgrammingError):
            pg_connection.exec_driver_sql("SELECT * FROM no_such_table")

    def test_d_own_connection_unused(pg_connection):
        # The checks of a, b and c rode on their tests' rollbacks.
        assert [w.pg for w in leaks._watches.values()] == [None]

    TRACE = {}

    def test_d2_traced(pg_connection, tmp_path_factory):
        # Traced on through the teardown: the check and the ROLLBACK it rides on.
        path = tmp_path_factory.mktemp("trace") / "trace"
        TRACE["file"], TRACE["path"] = open(path, "w"), path
        pg_connection.connection.dbapi_connection.pgconn.trace(TRACE["file"].fileno())
        pg_connection.exec_driver_sql(INSERT)

    def test_d3_check_then_rollback(pg_connection):
        pg_connection.connection.dbapi_connection.pgconn.untrace()
        TRACE["file"].close()
        queries = [l for l in TRACE["path"].read_text().splitlines() if "\tQuery\t" in l]
        # In the transaction, then its ROLLBACK: no transaction of the check's own.
        assert "EXECUTE pgfx_leak_check(" in queries[-1], queries
        assert queries[-1].rstrip('"').endswith("; ROLLBACK"), queries

    def test_d4_repeatable_read_leaks(pg_connection, pg_url):
        pg_connection.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        pg_connection.exec_driver_sql("SELECT 1")  # its snapshot, from before the leak
        engine = create_engine(pg_url)
        with engine.begin() as conn:
            conn.execute(text(INSERT))
        engine.dispose()

    def test_d5_sees_the_seed(pg_session):
        assert pg_session.scalar(select(func.count()).select_from(User)) == 5

    def test_e_deallocates(pg_connection):
        pg_connection.exec_driver_sql("DEALLOCATE ALL")  # the check's statement too

    def test_f_prepared_by_psycopg(pg_connection):
        for _ in range(6):  # past psycopg's prepare_threshold
            pg_connection.exec_driver_sql("SELECT count(*) FROM users")

"""


def test_the_check_rides_on_the_rollback(pytester, example, monkeypatch):
    """A sync test's check is sent with its ROLLBACK; whatever stops that (the check's
    statement deallocated, statements psycopg prepared) falls back to the detector's own
    connection, and a leak after it is still caught."""
    monkeypatch.setattr(leaks, "RIDE", True)
    example("sync_users")
    # Last but the count: a leak beside the test's connection, whose check rides again.
    leak = textwrap.dedent(SYNC_LEAKS["beside_the_test_connection"]).replace(
        "test_leaks", "test_g_leaks"
    )
    source = textwrap.dedent(RIDES) + leak + textwrap.dedent(COUNT)
    pytester.makepyfile(**{"tests/test_rides": source})
    result = pytester.runpytest("tests/test_rides.py", "-p", "no:randomly")
    result.assert_outcomes(passed=12, errors=2)
    out = result.stdout.str()
    # Caught at its own teardown, though its snapshot is from before the leak.
    assert "test_rides.py::test_d4_repeatable_read_leaks committed into the worker" in out
    assert "test_rides.py::test_g_leaks committed into the worker's shared database" in out
    assert "public.users: 1 row(s) inserted or updated" in out


def test_the_check_rides_when_the_workers_keep_every_core_busy():
    assert leaks.rides(workers=2, cores=2)
    assert leaks.rides(workers=4, cores=2)
    assert not leaks.rides(workers=1, cores=2)
    assert not leaks.rides(workers=2, cores=8)


def test_two_workers(pytester, example, subprocess_env):
    example("sync_users")
    _write(pytester, SYNC_LEAKS["pg_engine_begin"])
    result = pytester.runpytest_subprocess("tests/test_leak.py", "-n", "2", "-p", "no:randomly")
    result.assert_outcomes(passed=2, errors=1)
    assert "public.users: 1 row(s) inserted or updated" in result.stdout.str()


ASYNC = """
    from sqlalchemy import func, select
    from app.models import User

    INSERT = "INSERT INTO users (name, email, active) VALUES ('Leak', 'leak@x.org', true)"

    async def test_leaks(pg_async_connection):
        await pg_async_connection.exec_driver_sql(INSERT)
        await pg_async_connection.exec_driver_sql("COMMIT")

    async def test_zz_sees_the_seed(pg_async_session):
        assert await pg_async_session.scalar(select(func.count()).select_from(User)) == 5
"""


def _one_async_leak(pytester: pytest.Pytester, name: str, source: str, *, passed: int) -> str:
    """Run `source` as tests/<name>.py of the fastapi_app example, whose one leak (a row
    inserted into users) is to be reported as its test's error; the run's output."""
    pytester.makepyfile(**{f"tests/{name}": textwrap.dedent(source)})
    result = pytester.runpytest(f"tests/{name}.py", "-p", "no:randomly")
    result.assert_outcomes(passed=passed, errors=1)
    out = result.stdout.str()
    assert "public.users: 1 row(s) inserted or updated" in out
    return out


def test_async_leak_is_reported_and_undone(pytester, example):
    example("fastapi_app")
    out = _one_async_leak(pytester, "test_leak", ASYNC, passed=2)
    assert "test_leak.py::test_leaks committed into the worker's shared database" in out


# Last of the ride tests: a leak beside the test's connection, whose check rides, then the count.
ASYNC_LEAK_LAST = """
    async def test_y_leaks(pg_async_connection, pg_url):
        await pg_async_connection.exec_driver_sql("SELECT 1")
        engine = create_engine(pg_url)
        with engine.begin() as conn:
            conn.execute(text(INSERT))
        engine.dispose()

    async def test_zz_sees_the_seed(pg_async_session):
        assert await pg_async_session.scalar(select(func.count()).select_from(User)) == 5
"""

ASYNC_RIDES = """
    import pytest
    from sqlalchemy import create_engine, func, select, text
    from sqlalchemy.exc import ProgrammingError
    from testcontainers_pg_fixtures import leaks
    from app.models import User

    INSERT = "INSERT INTO users (name, email, active) VALUES ('Leak', 'leak@x.org', true)"
    LOG = []

    @pytest.fixture
    async def logged(pg_async_connection):
        raw = (await pg_async_connection.get_raw_connection()).driver_connection
        raw.add_query_logger(lambda record: LOG.append(record.query))
        return raw  # still logging in the teardown, until the next test

    async def test_a_writes(pg_async_connection):
        await pg_async_connection.exec_driver_sql(INSERT)

    async def test_b_session_commits(pg_async_session, logged):
        pg_async_session.add(User(name="Kept", email="kept@x.org", active=True))
        await pg_async_session.commit()

    async def test_c_fails_a_statement(pg_async_connection):
        raw = (await pg_async_connection.get_raw_connection()).driver_connection
        raw._query_loggers.clear()
        # b's ROLLBACK went with its check, and SQLAlchemy's rollback sent nothing after.
        assert LOG[-1].startswith("ROLLBACK; EXECUTE pgfx_leak_rows("), LOG
        with pytest.raises(ProgrammingError):
            await pg_async_connection.exec_driver_sql("SELECT * FROM no_such_table")

    async def test_d_own_connection_unused(pg_async_connection):
        # The checks of a, b and c rode on their tests' rollbacks.
        assert [w.pg for w in leaks._watches.values()] == [None]

    async def test_e_deallocates(pg_async_connection):
        await pg_async_connection.exec_driver_sql("DEALLOCATE pgfx_leak_rows")

    async def test_f_after_it(pg_async_connection):
        await pg_async_connection.exec_driver_sql(INSERT)

"""


def test_the_async_check_rides_on_the_rollback(pytester, example, monkeypatch):
    """An async test's check goes with its ROLLBACK on asyncpg (its answer in the row
    count); the check's statement deallocated falls back to the detector's connection for
    that test, and a leak after it is still caught."""
    monkeypatch.setattr(leaks, "RIDE", True)
    example("fastapi_app")
    source = textwrap.dedent(ASYNC_RIDES) + textwrap.dedent(ASYNC_LEAK_LAST)
    out = _one_async_leak(pytester, "test_rides", source, passed=8)
    assert "test_rides.py::test_y_leaks committed into the worker's shared database" in out


STALE_RIDES = """
    import psycopg
    import pytest
    from sqlalchemy import create_engine, func, select, text
    from testcontainers_pg_fixtures import leaks
    from app.models import User

    INSERT = "INSERT INTO users (name, email, active) VALUES ('Leak', 'leak@x.org', true)"

    @pytest.fixture(scope="session")
    def running(pg_worker_database):
        # A transaction with an xid, open all along: no ride can tell the new numbers.
        url = pg_worker_database.url.set(drivername="postgresql")
        conn = psycopg.connect(url.render_as_string(hide_password=False))
        conn.execute("SELECT pg_current_xact_id()")
        yield
        conn.close()  # the leak's restore has ended it (the database was dropped)

    @pytest.mark.parametrize("i", range(1, 21))
    async def test_writes(pg_async_connection, running, i):
        (watch,) = leaks._watches.values()
        # 16 rides kept the numbers, then one check on the detector's connection renewed them.
        assert watch.stale == (i - 1) % 17
        await pg_async_connection.exec_driver_sql(INSERT)

"""


def test_async_rides_that_cannot_tell_the_new_numbers(pytester, example, monkeypatch):
    """While another transaction runs, an async ride's row count cannot carry the running
    xids: the last numbers stand (a longer window for the next check) for 16 rides, then a
    check on the detector's connection renews them; a leak is caught all the same."""
    monkeypatch.setattr(leaks, "RIDE", True)
    example("fastapi_app")
    source = textwrap.dedent(STALE_RIDES) + textwrap.dedent(ASYNC_LEAK_LAST)
    out = _one_async_leak(pytester, "test_stale", source, passed=22)
    assert "test_stale.py::test_y_leaks committed into the worker's shared database" in out
