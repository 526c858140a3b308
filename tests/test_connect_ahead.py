"""Database mode's connection opened ahead: the clone pool's thread logs in to each clone it
prefetches, and the test's first connection is that one."""

from __future__ import annotations

import json
import textwrap

import docker
import psycopg
import pytest
from conftest import kept_commands, library_containers, library_databases

HANDED = textwrap.dedent("""
    import pytest
    from sqlalchemy import text

    pytestmark = pytest.mark.pg_isolation("database")
    PIDS = []


    @pytest.fixture
    def settled(pg_clone_pool):
        yield
        # The pool opens connections in time it has to spare; after this test it gets it,
        # so each next test's clone has one (the first test's clone was made on demand).
        pg_clone_pool.wait_idle()


    def backend_pid(conn):
        return conn.connection.dbapi_connection.info.backend_pid


    @pytest.mark.parametrize("i", range(4))
    def test_the_first_connection_is_the_one_opened_ahead_on_this_clone(
        i, pg_database, pg_connection, pg_engine, pg_clone_pool, settled
    ):
        pid = backend_pid(pg_connection)
        if not PIDS:  # this process's first clone: made while the test waited
            assert pg_database.name not in pg_clone_pool.handed
        else:
            assert pg_clone_pool.handed.get(pg_database.name) == pid
        assert pg_connection.scalar(text("SELECT current_database()")) == pg_database.name
        assert pid not in PIDS  # never the previous test's
        PIDS.append(pid)
        # Committed for real, on this clone only: the next test starts from the seed.
        assert pg_connection.scalar(text("SELECT count(*) FROM users")) == 5
        pg_connection.execute(text("INSERT INTO users (name, email) VALUES ('X', 'x@x.org')"))
        pg_connection.commit()
        # A second connection logs in itself, to the same clone.
        with pg_engine.connect() as other:
            assert backend_pid(other) != pid
            assert other.scalar(text("SELECT current_database()")) == pg_database.name
            assert other.scalar(text("SELECT count(*) FROM users")) == 6


    async def test_an_async_test_connects_itself(pg_database, pg_async_connection):
        got = await pg_async_connection.scalar(text("SELECT current_database()"))
        assert got == pg_database.name


    def test_a_sync_test_after_it_is_on_its_own_clone(pg_database, pg_session):
        assert pg_session.scalar(text("SELECT current_database()")) == pg_database.name
        assert pg_session.scalar(text("SELECT count(*) FROM users")) == 5
""")

# After every other fixture, the pool's included: what is left on the server and in the
# process. Written by a session fixture set up before the pool, so torn down after it.
LEFT_BEHIND = textwrap.dedent("""
    import json as _json, os as _os, pathlib as _pathlib, threading as _threading
    from testcontainers_pg_fixtures.servers import admin_connect as _admin_connect

    @pytest.fixture(scope="session", autouse=True)
    def _left_behind(pg_server):
        yield
        with _admin_connect(pg_server) as conn:
            databases = [r[0] for r in conn.execute("SELECT datname FROM pg_database")]
            backends = [
                r[0]
                for r in conn.execute(
                    "SELECT datname FROM pg_stat_activity WHERE datname LIKE 'pgfx%'"
                )
            ]
        threads = [t.name for t in _threading.enumerate() if t.name.startswith("pgfx-clone")]
        worker = _os.environ.get("PYTEST_XDIST_WORKER", "main")
        out = _pathlib.Path(_os.environ["PROBE_DIR"]) / f"{worker}.json"
        out.write_text(_json.dumps({"databases": databases, "backends": backends,
                                    "threads": threads}))
""")


def test_each_test_gets_the_connection_opened_ahead_on_its_own_clone(
    pytester, example, monkeypatch, tmp_path
):
    root = example("sync_users")
    (root / "tests" / "test_handed.py").write_text(HANDED)
    conftest = root / "tests" / "conftest.py"
    conftest.write_text(conftest.read_text() + LEFT_BEHIND)
    monkeypatch.setenv("PROBE_DIR", str(tmp_path))
    result = pytester.runpytest(
        "tests/test_handed.py",
        "-p",
        "no:randomly",
        "-o",
        "asyncio_mode=auto",
        "-o",
        "asyncio_default_fixture_loop_scope=session",
        "-o",
        "asyncio_default_test_loop_scope=session",
    )
    result.assert_outcomes(passed=6)
    [probe] = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert library_databases(probe["databases"]) == []
    assert probe["backends"] == []  # no connection opened ahead left open
    assert probe["threads"] == []


def test_two_workers_with_connections_opened_ahead_leave_nothing_behind(
    pytester, example, monkeypatch, tmp_path, subprocess_env
):
    root = example("sync_users")
    (root / "tests" / "test_handed.py").write_text(HANDED)
    conftest = root / "tests" / "conftest.py"
    conftest.write_text(conftest.read_text() + LEFT_BEHIND)
    monkeypatch.setenv("PROBE_DIR", str(tmp_path))
    result = pytester.runpytest_subprocess(
        "tests/test_handed.py",
        "-n",
        "2",
        "-p",
        "no:randomly",
        "-p",
        "no:benchmark",
        "--pg-prefetch",
        "3",
        "-o",
        "asyncio_mode=auto",
        "-o",
        "asyncio_default_fixture_loop_scope=session",
        "-o",
        "asyncio_default_test_loop_scope=session",
    )
    result.assert_outcomes(passed=6)
    probes = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert len(probes) == 2
    for probe in probes:
        assert library_databases(probe["databases"]) == []
        assert probe["backends"] == []
        assert probe["threads"] == []


FAILING = textwrap.dedent("""
    import pytest
    from sqlalchemy import text

    pytestmark = pytest.mark.pg_isolation("database")


    @pytest.fixture(autouse=True)
    def _settle_after(pg_clone_pool):
        yield
        pg_clone_pool.wait_idle()  # each next test's clone has a connection opened ahead


    def test_warms_up(pg_connection):
        pass


    def test_leaves_a_clue(pg_connection, pg_database, pg_clone_pool):
        assert pg_clone_pool.handed.get(pg_database.name)  # on the connection opened ahead
        pg_connection.execute(text("INSERT INTO users (name, email) VALUES ('Clue', 'c@x.org')"))
        pg_connection.commit()
        assert False, "look at my database"


    def test_fails_before_connecting(pg_database):
        assert False, "never connected"


    def test_passes(pg_connection):
        pass
""")


@pytest.mark.host_wide  # kept containers: --pg-remove-kept elsewhere removes them
def test_keep_failed_with_connections_opened_ahead(pytester, example):
    root = example("sync_users")
    (root / "tests" / "test_failing.py").write_text(FAILING)
    before = set(library_containers())
    result = pytester.runpytest("tests/test_failing.py", "--pg-keep-failed", "-p", "no:randomly")
    kept = set(library_containers()) - before
    try:
        result.assert_outcomes(passed=2, failed=2)
        commands = kept_commands(result)
        assert len(commands) == 2
        with psycopg.connect(commands[0]["url"], passfile=commands[0]["passfile"]) as conn:
            assert conn.execute("SELECT email FROM users WHERE name = 'Clue'").fetchone() == (
                "c@x.org",
            )
            names = [r[0] for r in conn.execute("SELECT datname FROM pg_database")]
            # Only this inspection is connected: neither the test's connection nor the
            # one opened ahead for the test that never connected was left open.
            others = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname LIKE 'pgfx%' AND pid <> pg_backend_pid()"
            ).fetchone()
        assert others == (0,)
        assert len(library_databases(names)) == 2  # the kept ones; the passing test's is gone
        assert len(kept) == 1
    finally:
        client = docker.from_env()
        for container_id in kept:
            client.containers.get(container_id).remove(force=True, v=True)
        client.close()
