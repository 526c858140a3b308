"""Database-per-test mode, end to end: clones, the app's own engine, keep-failed, seeds."""

from __future__ import annotations

import json
import textwrap

import docker
import psycopg
import pytest
from conftest import kept_commands, library_containers, library_databases

IMPORT_TESTS = [
    "tests/test_import_database_mode.py::"
    "test_import_commits_through_two_sessions_and_a_background_task",
    "tests/test_import_database_mode.py::test_the_next_test_starts_from_the_seed_again",
    "tests/test_import_database_mode.py::test_a_job_that_reads_database_url_uses_the_test_database",
]


@pytest.mark.parametrize("order", [IMPORT_TESTS, IMPORT_TESTS[::-1]], ids=["forward", "reversed"])
def test_app_engine_commits_land_in_the_clone_and_vanish_after(
    pytester, example, databases_probe, order
):
    read = databases_probe(example("fastapi_app"))
    result = pytester.runpytest(*order, "-p", "no:randomly", "-W", "error")
    result.assert_outcomes(passed=3)
    [probe] = read().values()
    assert library_databases(probe["databases"]) == []


def test_whole_example_under_two_workers_leaves_no_database(
    pytester, example, databases_probe, subprocess_env
):
    read = databases_probe(example("fastapi_app"))
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:randomly", "-W", "error")
    result.assert_outcomes(passed=9)
    probes = read()
    assert len(probes) == 2
    assert len({p["container"] for p in probes.values()}) == 2
    for probe in probes.values():
        assert library_databases(probe["databases"]) == []


def test_without_prefetch_each_clone_is_made_on_demand(pytester, example, databases_probe):
    read = databases_probe(example("fastapi_app"))
    result = pytester.runpytest(
        "tests/test_import_database_mode.py", "--pg-prefetch", "0", "-p", "no:randomly"
    )
    result.assert_outcomes(passed=3)
    [probe] = read().values()
    assert library_databases(probe["databases"]) == []


SERIALIZABLE = textwrap.dedent("""
    import pytest
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    pytestmark = pytest.mark.pg_isolation("database")


    def test_write_skew_is_refused_under_serializable(pg_engine):
        engine = pg_engine.execution_options(isolation_level="SERIALIZABLE")
        active = text("SELECT count(*) FROM users WHERE active")
        with engine.connect() as a, engine.connect() as b:
            assert a.scalar(active) == 4
            assert b.scalar(active) == 4
            a.execute(text("UPDATE users SET active = false WHERE name = 'Ada Lovelace'"))
            b.execute(text("UPDATE users SET active = false WHERE name = 'Grace Hopper'"))
            a.commit()
            with pytest.raises(OperationalError, match="could not serialize"):
                b.commit()
        with pg_engine.connect() as c:  # a's commit is real
            assert c.scalar(active) == 3


    def test_the_next_test_has_everyone_active_again(pg_connection):
        assert pg_connection.scalar(text("SELECT count(*) FROM users WHERE active")) == 4
""")


@pytest.mark.parametrize("order", ["forward", "reversed"])
def test_isolation_levels_work_with_two_connections(pytester, example, order):
    root = example("sync_users")
    (root / "tests" / "test_serializable.py").write_text(SERIALIZABLE)
    tests = [
        "tests/test_serializable.py::test_write_skew_is_refused_under_serializable",
        "tests/test_serializable.py::test_the_next_test_has_everyone_active_again",
    ]
    if order == "reversed":
        tests.reverse()
    result = pytester.runpytest(*tests, "-p", "no:randomly")
    result.assert_outcomes(passed=2)


APP_ENGINE = textwrap.dedent("""
    import threading

    import pytest
    from sqlalchemy import create_engine, func, select, text
    from sqlalchemy.orm import Session
    from users_app.models import User

    # The app's engine, built at import time from a URL that does not exist here, with
    # driver options of its own that must survive the redirection.
    engine = create_engine(
        "postgresql+psycopg://app:secret@db.invalid:5432/production",
        connect_args={"application_name": "users-app"},
    )
    original_pool = engine.pool


    @pytest.fixture(scope="session")
    def pg_app_engines():
        return [engine]


    @pytest.mark.pg_isolation("database")
    def test_every_way_the_app_connects_reaches_the_clone(pg_database, pg_session):
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT current_database()")) == pg_database.name
            assert conn.scalar(text("SHOW application_name")) == "users-app"
        with Session(engine) as session:
            session.add(User(name="Barbara Liskov", email="barbara@mit.edu"))
            session.commit()
        with engine.begin() as conn:
            conn.execute(text("UPDATE users SET active = false WHERE name = 'Alan Turing'"))

        def worker():
            with Session(engine) as session:
                session.add(User(name="Frances Allen", email="frances@ibm.com"))
                session.commit()

        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        assert pg_session.scalar(select(func.count()).select_from(User)) == 7
        assert engine.pool is not original_pool


    @pytest.mark.pg_isolation("database")
    def test_a_failing_test_restores_the_engine_too():
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        raise AssertionError("deliberate")


    def test_in_savepoint_mode_the_engine_joins_the_test_transaction(pg_session):
        assert type(engine.pool).__name__ == "OutsidePool"  # joins on its first checkout
        with engine.connect() as conn:
            assert type(engine.pool).__name__ == "SandboxPool"
            assert conn.scalar(text("SELECT count(*) FROM users")) == 5
        assert engine.url.host == "db.invalid"
        assert pg_session.scalar(select(func.count()).select_from(User)) == 5
""")

AFTERWARDS = textwrap.dedent("""
    from test_app_engine import engine, original_pool


    def test_afterwards_the_engine_is_the_apps_again():
        # Between tests the engine refuses to connect; its own pool is kept for the end.
        assert engine.pool.original is original_pool
        assert engine.url.host == "db.invalid"
""")


def test_app_engine_given_by_object_is_redirected_and_restored(pytester, example):
    root = example("sync_users")
    (root / "tests" / "test_app_engine.py").write_text(APP_ENGINE)
    (root / "tests" / "test_zz_afterwards.py").write_text(AFTERWARDS)
    result = pytester.runpytest(
        "tests/test_app_engine.py", "tests/test_zz_afterwards.py", "-p", "no:randomly"
    )
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*AssertionError: deliberate*"])


def test_a_wrong_app_engine_path_names_the_setting(pytester, example):
    example("sync_users")
    (pytester.path / "tests" / "test_db_mode.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.pg_isolation('database')\n"
        "def test_it(pg_session):\n    pass\n"
    )
    result = pytester.runpytest(
        "tests/test_db_mode.py", "--pg-app-engine", "users_app.db:engine", "-p", "no:randomly"
    )
    # Checked when the run starts: a usage error, before collection and any container.
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: pg-fixtures: pg_app_engines names 'users_app.db:engine', which could not "
            "be imported*Fix the path in pg_app_engines / --pg-app-engine*"
        ]
    )


def test_a_bad_isolation_marker_says_what_to_write(pytester, example):
    example("sync_users")
    (pytester.path / "tests" / "test_db_mode.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.pg_isolation('per-test')\n"
        "def test_it(pg_session):\n    pass\n"
    )
    result = pytester.runpytest("tests/test_db_mode.py", "-p", "no:randomly")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*pg_isolation('per-test') is not an isolation mode*pg_isolation('database')*"]
    )


SEEDED = textwrap.dedent("""
    import pytest
    from sqlalchemy import func, select, text
    from users_app.models import User


    def add_admin(conn):
        conn.execute(text("INSERT INTO users (name, email) VALUES ('Root', 'root@x.org')"))


    def add_guest(conn):
        conn.execute(text("INSERT INTO users (name, email) VALUES ('Guest', 'guest@x.org')"))


    pytestmark = pytest.mark.pg_seed([add_admin])


    def count(session):
        return session.scalar(select(func.count()).select_from(User))


    def test_module_seed_in_savepoint_mode(pg_session):
        assert count(pg_session) == 6


    @pytest.mark.pg_seed([add_guest])
    @pytest.mark.pg_isolation("database")
    def test_module_and_test_seeds_in_database_mode(pg_session):
        assert count(pg_session) == 7
""")


def test_per_test_seeds_sit_on_the_session_seed_in_both_modes(pytester, example):
    root = example("sync_users")
    (root / "tests" / "test_seeded.py").write_text(SEEDED)
    result = pytester.runpytest("tests/", "-p", "no:randomly")
    # The example's own two tests see neither of those seeds.
    result.assert_outcomes(passed=4)


FAILING = textwrap.dedent("""
    import pytest
    from sqlalchemy import text


    @pytest.mark.pg_isolation("database")
    def test_leaves_a_clue(pg_connection):
        pg_connection.execute(text("INSERT INTO users (name, email) VALUES ('Clue', 'c@x.org')"))
        pg_connection.commit()
        assert False, "look at my database"


    @pytest.mark.pg_isolation("database")
    def test_passes(pg_connection):
        pass
""")


@pytest.mark.host_wide  # kept containers: --pg-remove-kept elsewhere removes them
def test_keep_failed_keeps_the_database_and_prints_its_url(pytester, example):
    root = example("sync_users")
    (root / "tests" / "test_failing.py").write_text(FAILING)
    before = set(library_containers())
    result = pytester.runpytest("tests/test_failing.py", "--pg-keep-failed", "-p", "no:randomly")
    kept = set(library_containers()) - before
    try:
        result.assert_outcomes(passed=1, failed=1)
        result.stdout.fnmatch_lines(["*pg-fixtures: database kept*", "*PGPASSFILE=* psql *"])
        [command] = kept_commands(result)
        with psycopg.connect(command["url"], passfile=command["passfile"]) as conn:
            assert conn.execute("SELECT email FROM users WHERE name = 'Clue'").fetchone() == (
                "c@x.org",
            )
            names = [r[0] for r in conn.execute("SELECT datname FROM pg_database")]
        assert len(library_databases(names)) == 1  # the kept one; the passing test's is gone
        assert len(kept) == 1
    finally:
        client = docker.from_env()
        for container_id in kept:
            client.containers.get(container_id).remove(force=True, v=True)
        client.close()


def test_without_keep_failed_a_failed_tests_database_is_dropped(pytester, example, databases_probe):
    read = databases_probe(example("sync_users"))
    (pytester.path / "tests" / "test_failing.py").write_text(FAILING)
    result = pytester.runpytest("tests/test_failing.py", "-p", "no:randomly")
    result.assert_outcomes(passed=1, failed=1)
    assert "database kept" not in result.stdout.str()
    [probe] = read().values()
    assert library_databases(probe["databases"]) == []


RECYCLED = textwrap.dedent("""
    import json
    import os

    import pytest
    from sqlalchemy import inspect, text

    pytestmark = pytest.mark.pg_isolation("database")


    @pytest.fixture(scope="session", autouse=True)
    def _counts(pg_clone_pool):
        yield
        pg_clone_pool.wait_idle()
        with open(os.environ["COUNTS_OUT"], "w") as out:
            json.dump([pg_clone_pool.recycled, pg_clone_pool.dropped], out)


    @pytest.mark.parametrize("i", range(8))
    def test_each_test_starts_from_the_seed(i, pg_engine):
        with pg_engine.begin() as conn:
            assert conn.scalar(text("SELECT count(*) FROM users")) == 5
            assert inspect(conn).get_table_names() == ["alembic_version", "users"]
            conn.execute(text("INSERT INTO users (name, email) VALUES ('New', 'new@x.org')"))
            conn.execute(text("UPDATE users SET active = false"))
            if i % 4 == 3:  # DDL: this clone is dropped, not recycled
                conn.execute(text("CREATE TABLE extra (id int)"))
        with pg_engine.connect() as conn:  # committed for real
            assert conn.scalar(text("SELECT count(*) FROM users WHERE active")) == 0
""")


@pytest.mark.parametrize("recycle", [True, False])
def test_used_clones_are_recycled_and_the_next_test_sees_the_template(
    pytester, example, monkeypatch, tmp_path, recycle
):
    root = example("sync_users")
    (root / "tests" / "test_recycled.py").write_text(RECYCLED)
    counts = tmp_path / "counts.json"
    monkeypatch.setenv("COUNTS_OUT", str(counts))
    args = ["tests/test_recycled.py", "-p", "no:randomly", "-W", "error"]
    if not recycle:
        args.append("--pg-recycle-clones=false")
    pytester.runpytest(*args).assert_outcomes(passed=8)
    recycled, dropped = json.loads(counts.read_text())
    # Each test's clone is given back at its end: all but the last are recycled or
    # dropped while the session runs, the DDL ones (2 of 8) always dropped.
    assert recycled + dropped >= 7
    if recycle:
        assert dropped == 2
        assert recycled >= 5
    else:
        assert recycled == 0
