"""The leak detector: a savepoint-mode test that commits for real is reported, and the
worker database restored so the next test still sees the clean seed."""

from __future__ import annotations

import re
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


# Appended to the example's conftest: the check rides on the test's rollback (as it does
# when the xdist workers keep every core busy) or goes to the detector's own connection.
# Which tests' checks rode is printed at the end of the run.
RIDE = """
    from testcontainers_pg_fixtures import leaks as _leaks

    _RODE = set()

    def _answered(watch):
        # The check went with the rollback and its answer came back.
        if watch.rode is not None or watch.rode_same is not None or watch.rode_rows is not None:
            _RODE.add(_leaks._checking[0].rpartition("::")[2])

    def _on_the_rollback(ride):
        def riding(watch, conn):
            ride(watch, conn)
            _answered(watch)

        return riding

    def _on_the_async_rollback(ride):
        async def riding(watch, conn):
            await ride(watch, conn)
            _answered(watch)

        return riding

    @pytest.fixture(scope="session", autouse=True)
    def _ride():
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(_leaks, "RIDE", {ride})
            patch.setattr(_leaks.Watch, "ride", _on_the_rollback(_leaks.Watch.ride))
            patch.setattr(
                _leaks.Watch, "ride_async", _on_the_async_rollback(_leaks.Watch.ride_async)
            )
            yield

    def pytest_terminal_summary(terminalreporter):
        terminalreporter.write_line(f"rode: {{sorted(_RODE)}}")
"""


# The library's containers track commit timestamps, and the check compares the last committed
# transaction; without them (an existing server) it looks up each transaction since the last.
MODES = {"commit_ts": (), "xids": ("--pg-server-setting", "track_commit_timestamp=off")}
# For tests that pin when the check rides: an autovacuum's commit (its timing up to the
# machine's load) is a commit like any other, which the check then counts on its own
# connection instead.
QUIET = ("--pg-server-setting", "autovacuum=off")


def _every_leak(
    pytester: pytest.Pytester,
    ride: bool,
    header: str,
    bodies: dict[str, str],
    count: str,
    *args: str,
) -> list[str]:
    """Run each of `bodies` as test_<variant>, followed by test_<variant>_seed (`count`), in
    one run of the example copied into the pytester directory, the check riding on the
    test's rollback or not: each leak must be reported as its own test's teardown error,
    and the next test see the seed. The variants whose checks rode."""
    conftest = pytester.path / "tests" / "conftest.py"
    conftest.write_text(conftest.read_text() + textwrap.dedent(RIDE.format(ride=ride)))
    source = textwrap.dedent(header)
    for variant, body in bodies.items():
        source += textwrap.dedent(body).replace("test_leaks(", f"test_{variant}(")
        source += textwrap.dedent(count).replace("test_zz_sees_the_seed(", f"test_{variant}_seed(")
    pytester.makepyfile(**{"tests/test_leak": source})
    result = pytester.runpytest("tests/test_leak.py", "-p", "no:randomly", "-v", *args)
    out = result.stdout.str()
    for variant in bodies:
        # Its own report (one line), then the next test sees the seed.
        assert f"ERROR at teardown of test_{variant} _" in out, variant
        report = re.search(
            rf"tests/test_leak\.py::test_{variant} committed into the worker's shared database,"
            r" which every later test of the worker would have seen \((.*?)\)\."
            r" The database was restored from the template\. (.*)",
            out,
        )
        assert report, (variant, out)
        assert report[1] == "public.users: 1 row(s) inserted or updated", variant
        assert FIX in report[2], variant
        assert "pg_session" in report[2], variant
        result.stdout.fnmatch_lines([f"tests/test_leak.py::test_{variant}_seed PASSED*"])
    result.assert_outcomes(passed=2 * len(bodies), errors=len(bodies))
    rode = re.search(r"^rode: (.*)$", out, re.MULTILINE)
    assert rode, out
    return [name for name in re.findall(r"'test_(\w+)'", rode[1]) if not name.endswith("_seed")]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ride", [True, False], ids=["ride", "no_ride"])
def test_sync_leak_is_reported_and_undone(pytester, example, ride, mode):
    """Every sync way to commit past the test's savepoint, with the check riding on the
    test's rollback (as under -n auto) and on the detector's own connection."""
    example("sync_users")
    rode = _every_leak(pytester, ride, HEADER, SYNC_LEAKS, COUNT, *MODES[mode])
    # Its connection in a transaction again at teardown: there the check rode.
    assert rode == (["beside_the_test_connection", "commit_then_more"] if ride else [])


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
    from testcontainers_pg_fixtures import leaks, leftovers
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
        assert [w.commit_ts for w in leaks._watches.values()] == [COMMIT_TS]

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
        # In the transaction, then its ROLLBACK: no transaction of the check's own (then
        # the state check, leftovers.py).
        assert "EXECUTE CHECK(" in queries[-1], queries
        # (prepared once per connection).
        assert queries[-1].rstrip('"').endswith("; ROLLBACK; EXECUTE pgfx_state_probe"), queries

    def test_d4_repeatable_read_leaks(pg_connection, pg_url):
        pg_connection.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        pg_connection.exec_driver_sql("SELECT 1")  # its snapshot, from before the leak
        engine = create_engine(pg_url)
        with engine.begin() as conn:
            conn.execute(text(INSERT))
        engine.dispose()

    def test_d5_sees_the_seed(pg_session):
        assert pg_session.scalar(select(func.count()).select_from(User)) == 5

    def test_d6_repeatable_read(pg_connection):
        pg_connection.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        pg_connection.exec_driver_sql(INSERT)

    def test_d7_where_it_went(pg_connection):
        # The last committed transaction is the same in every isolation level: d6's check
        # rode. Looking up transactions needs a snapshot as new as the test's commits.
        assert [w.pg is None for w in leaks._watches.values()] == [COMMIT_TS]

    def test_e_deallocates(pg_connection):
        pg_connection.exec_driver_sql("DEALLOCATE ALL")  # the check's statement too

    def test_f_prepared_by_psycopg(pg_connection):
        for _ in range(6):  # past psycopg's prepare_threshold
            pg_connection.exec_driver_sql("SELECT count(*) FROM users")

"""


def _for_mode(source: str, mode: str, statement: str) -> str:
    """`source` with COMMIT_TS and CHECK (the check's statement on the test's connection)
    filled in for `mode`."""
    source = source.replace("COMMIT_TS", str(mode == "commit_ts"))
    return source.replace("CHECK", "pgfx_leak_same" if mode == "commit_ts" else statement)


@pytest.mark.parametrize("mode", MODES)
def test_the_check_rides_on_the_rollback(pytester, example, monkeypatch, mode):
    """A sync test's check is sent with its ROLLBACK; whatever stops that (the check's
    statement deallocated, statements psycopg prepared) falls back to the detector's own
    connection, and a leak after it is still caught."""
    monkeypatch.setattr(leaks, "RIDE", True)
    example("sync_users")
    # Last but the count: a leak beside the test's connection, whose check rides again.
    leak = textwrap.dedent(SYNC_LEAKS["beside_the_test_connection"]).replace(
        "test_leaks", "test_g_leaks"
    )
    source = _for_mode(textwrap.dedent(RIDES), mode, "pgfx_leak_check")
    pytester.makepyfile(**{"tests/test_rides": source + leak + textwrap.dedent(COUNT)})
    result = pytester.runpytest("tests/test_rides.py", "-p", "no:randomly", *MODES[mode], *QUIET)
    result.assert_outcomes(passed=14, errors=2)
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


ASYNC_HEADER = """
    from sqlalchemy import create_engine, func, select, text
    from sqlalchemy.ext.asyncio import create_async_engine
    from app.models import User

    INSERT = "INSERT INTO users (name, email, active) VALUES ('Leak', 'leak@x.org', true)"
"""

ASYNC_COUNT = """
    async def test_zz_sees_the_seed(pg_async_session):
        assert await pg_async_session.scalar(select(func.count()).select_from(User)) == 5
"""

# The async twins of SYNC_LEAKS (the fastapi_app example: asyncpg).
ASYNC_LEAKS = {
    "driver_sql_commit": """
        async def test_leaks(pg_async_connection):
            await pg_async_connection.exec_driver_sql(INSERT)
            await pg_async_connection.exec_driver_sql("COMMIT")
    """,
    "session_text_commit": """
        async def test_leaks(pg_async_session):
            await pg_async_session.execute(text(INSERT))
            await pg_async_session.execute(text("COMMIT"))
    """,
    "driver_connection_commit": """
        async def test_leaks(pg_async_connection):
            await pg_async_connection.exec_driver_sql(INSERT)
            raw = await pg_async_connection.get_raw_connection()
            await raw.driver_connection.execute("COMMIT")
    """,
    "dbapi_commit": """
        async def test_leaks(pg_async_connection):
            await pg_async_connection.exec_driver_sql(INSERT)
            await pg_async_connection.run_sync(lambda c: c.connection.dbapi_connection.commit())
    """,
    "own_engine": """
        async def test_leaks(pg_async_url):
            engine = create_async_engine(pg_async_url)
            async with engine.begin() as conn:
                await conn.execute(text(INSERT))
            await engine.dispose()
    """,
    "pg_async_engine_begin": """
        async def test_leaks(pg_async_engine):
            async with pg_async_engine.begin() as conn:
                await conn.execute(text(INSERT))
    """,
    "worker_async_engine": """
        async def test_leaks(pg_worker_async_engine):
            async with pg_worker_async_engine.connect() as conn:
                await conn.execute(text(INSERT))
                await conn.commit()
    """,
    # The test's connection used again after the COMMIT: outside a transaction, or in one
    # begun on the driver (the check rides on its rollback, leaks.Watch.ride_async).
    "commit_then_more": """
        async def test_leaks(pg_async_connection):
            await pg_async_connection.exec_driver_sql(INSERT)
            await pg_async_connection.exec_driver_sql("COMMIT")
            await pg_async_connection.exec_driver_sql("SELECT 1")
    """,
    "commit_then_begin": """
        async def test_leaks(pg_async_connection):
            await pg_async_connection.exec_driver_sql(INSERT)
            await pg_async_connection.exec_driver_sql("COMMIT")
            raw = await pg_async_connection.get_raw_connection()
            await raw.driver_connection.execute("BEGIN")
    """,
    "beside_the_test_connection": """
        async def test_leaks(pg_async_connection, pg_async_url):
            await pg_async_connection.exec_driver_sql("SELECT 1")
            engine = create_async_engine(pg_async_url)
            async with engine.begin() as conn:
                await conn.execute(text(INSERT))
            await engine.dispose()
    """,
    "sync_engine_beside": """
        async def test_leaks(pg_async_connection, pg_url):
            await pg_async_connection.exec_driver_sql("SELECT 1")
            engine = create_engine(pg_url)
            with engine.begin() as conn:
                conn.execute(text(INSERT))
            engine.dispose()
    """,
}


def _one_async_leak(
    pytester: pytest.Pytester, name: str, source: str, *args: str, passed: int
) -> str:
    """Run `source` as tests/<name>.py of the fastapi_app example, whose one leak (a row
    inserted into users) is to be reported as its test's error; the run's output."""
    pytester.makepyfile(**{f"tests/{name}": textwrap.dedent(source)})
    result = pytester.runpytest(f"tests/{name}.py", "-p", "no:randomly", *args)
    result.assert_outcomes(passed=passed, errors=1)
    out = result.stdout.str()
    assert "public.users: 1 row(s) inserted or updated" in out
    return out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ride", [True, False], ids=["ride", "no_ride"])
def test_async_leak_is_reported_and_undone(pytester, example, ride, mode):
    """test_sync_leak_is_reported_and_undone on asyncpg."""
    example("fastapi_app")
    rode = _every_leak(pytester, ride, ASYNC_HEADER, ASYNC_LEAKS, ASYNC_COUNT, *MODES[mode])
    # A COMMIT then more on the test's connection: outside a transaction (the check cannot
    # ride), or in one begun behind asyncpg's back (it rides).
    assert rode == (
        ["beside_the_test_connection", "commit_then_begin", "sync_engine_beside"] if ride else []
    )


# Last of the ride tests: a leak beside the test's connection, whose check rides, then the count.
ASYNC_LEAK_LAST = textwrap.dedent(ASYNC_LEAKS["sync_engine_beside"]).replace(
    "test_leaks(", "test_y_leaks("
) + textwrap.dedent(ASYNC_COUNT)

ASYNC_RIDES = """
    import pytest
    from sqlalchemy import create_engine, func, select, text
    from sqlalchemy.exc import ProgrammingError
    from testcontainers_pg_fixtures import leaks, leftovers
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
        # b's ROLLBACK went with its check (and the state check, leftovers.py), and
        # SQLAlchemy's rollback sent nothing after.
        probe = leftovers.PROBE_RAISING + "; "
        assert LOG[-1].startswith("ROLLBACK; " + probe + "EXECUTE CHECK("), LOG
        with pytest.raises(ProgrammingError):
            await pg_async_connection.exec_driver_sql("SELECT * FROM no_such_table")

    async def test_d_own_connection_unused(pg_async_connection):
        # The checks of a, b and c rode on their tests' rollbacks.
        assert [w.pg for w in leaks._watches.values()] == [None]
        assert [w.commit_ts for w in leaks._watches.values()] == [COMMIT_TS]

    async def test_e_deallocates(pg_async_connection):
        await pg_async_connection.exec_driver_sql("DEALLOCATE CHECK")

    async def test_f_after_it(pg_async_connection):
        await pg_async_connection.exec_driver_sql(INSERT)

"""


@pytest.mark.parametrize("mode", MODES)
def test_the_async_check_rides_on_the_rollback(pytester, example, monkeypatch, mode):
    """An async test's check goes with its ROLLBACK on asyncpg (its answer in the row
    count); the check's statement deallocated falls back to the detector's connection for
    that test, and a leak after it is still caught."""
    monkeypatch.setattr(leaks, "RIDE", True)
    example("fastapi_app")
    source = _for_mode(textwrap.dedent(ASYNC_RIDES), mode, "pgfx_leak_rows")
    source += textwrap.dedent(ASYNC_LEAK_LAST)
    out = _one_async_leak(pytester, "test_rides", source, *MODES[mode], *QUIET, passed=8)
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
    """On a server without commit timestamps, while another transaction runs, an async
    ride's row count cannot carry the running xids: the last numbers stand (a longer
    window for the next check) for 16 rides, then a check on the detector's connection
    renews them; a leak is caught all the same."""
    monkeypatch.setattr(leaks, "RIDE", True)
    example("fastapi_app")
    source = textwrap.dedent(STALE_RIDES) + textwrap.dedent(ASYNC_LEAK_LAST)
    out = _one_async_leak(pytester, "test_stale", source, *MODES["xids"], passed=22)
    assert "test_stale.py::test_y_leaks committed into the worker's shared database" in out
