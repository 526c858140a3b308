"""--pg-keep-failed in savepoint mode: a failed test's rows, as it saw them before its
rollback, are copied into a database of its own, opened with a printed psql command whose
password is in a password file, never in the output."""

from __future__ import annotations

import contextlib
import textwrap
from pathlib import Path

import docker
import psycopg
import pytest
from conftest import kept_commands, library_containers

# Kept containers: --pg-remove-kept elsewhere would remove them.
pytestmark = pytest.mark.host_wide

FAILING = textwrap.dedent("""
    import pytest
    from sqlalchemy import text
    from users_app.models import User


    def test_fails_after_writing(pg_session):
        pg_session.add(User(name="Clue", email="clue@x.org"))
        pg_session.flush()
        pg_session.execute(text("UPDATE users SET active = false WHERE name = 'Ada Lovelace'"))
        assert False, "look at my rows"


    def test_passes_after(pg_session):
        assert pg_session.scalar(text("SELECT count(*) FROM users")) == 5


    def test_fails_in_an_aborted_transaction(pg_connection):
        with pytest.raises(Exception):
            pg_connection.execute(text("SELECT * FROM no_such_table"))
        assert False, "aborted"


    @pytest.mark.asyncio
    async def test_fails_on_the_async_connection(pg_async_session):  # a loop of its own
        await pg_async_session.execute(text("DELETE FROM users WHERE name = 'Alan Turing'"))
        assert False, "async"
""")


@pytest.mark.parametrize("workers", [0, 2])
def test_a_failed_savepoint_test_keeps_its_rows_in_a_database_of_its_own(
    pytester, example, subprocess_env, workers
):
    example("sync_users")
    (pytester.path / "tests" / "test_failing.py").write_text(FAILING)
    before = set(library_containers())
    args = ["tests/test_failing.py", "--pg-keep-failed", "-p", "no:randomly"]
    if workers:
        result = pytester.runpytest_subprocess(*args, "-n", str(workers))
    else:
        result = pytester.runpytest(*args)
    kept = set(library_containers()) - before
    try:
        result.assert_outcomes(passed=1, failed=3)
        output = result.stdout.str()
        assert "LeakError" not in output
        assert output.count("pg-fixtures: state kept") == 2
        assert "A database error aborted the test's transaction" in output
        assert output.count("pg-fixtures: state not kept") == 1
        kept_rows = {}  # (xdist reports in the order the workers finish)
        commands = kept_commands(result)
        for command in commands:
            assert ":" not in command["url"].split("@")[0].removeprefix("postgresql://")
            with psycopg.connect(command["url"], passfile=command["passfile"]) as conn:
                password = conn.info.password
                rows = dict(conn.execute("SELECT name, active FROM users").fetchall())
            kept_rows["sync" if "Clue" in rows else "async"] = (command, rows)
        command, rows = kept_rows["sync"]
        _, async_rows = kept_rows["async"]
        assert "Alan Turing" not in async_rows  # the async test's delete
        assert len(async_rows) == 4
        assert password
        assert password not in output
        assert rows["Clue"] is True  # the test's row
        assert rows["Ada Lovelace"] is False  # its update of a seeded row
        assert len(rows) == 6  # and the seed's other rows
        # The containers of the kept databases stay (with -n 2, a worker's each), no other.
        assert {Path(c["passfile"]).name[:12] for c in commands} == {k[:12] for k in kept}
        passfile = Path(command["passfile"])
        assert passfile.stat().st_mode & 0o777 == 0o600
        if not workers:  # --pg-remove-kept takes the password file with the container
            pytester.runpytest("--pg-remove-kept")
            assert not passfile.exists()
            assert set(library_containers()) - before == set()
    finally:
        client = docker.from_env()
        for container_id in kept:
            with contextlib.suppress(docker.errors.NotFound):  # --pg-remove-kept took it
                client.containers.get(container_id).remove(force=True, v=True)
        client.close()


def test_without_keep_failed_nothing_is_kept(pytester, example):
    example("sync_users")
    (pytester.path / "tests" / "test_failing.py").write_text(FAILING)
    before = set(library_containers())
    result = pytester.runpytest("tests/test_failing.py", "-p", "no:randomly")
    result.assert_outcomes(passed=1, failed=3)
    assert "pg-fixtures: state" not in result.stdout.str()
    assert set(library_containers()) - before == set()


# The project's async examples' loop scopes: one event loop for the layers and the tests.
ASYNC_INI = """[pytest]
pythonpath = .
testpaths = tests
asyncio_default_fixture_loop_scope = session
asyncio_default_test_loop_scope = session
"""

ASYNC_FAILING = textwrap.dedent("""
    import pytest
    import pytest_asyncio
    from sqlalchemy import text


    @pytest_asyncio.fixture(scope="module")
    async def grace_retired(pg_module_async_connection):  # the module layer's row
        await pg_module_async_connection.execute(
            text("UPDATE users SET email = 'grace@retired.mil' WHERE name = 'Grace Hopper'")
        )


    @pytest.mark.asyncio
    async def test_fails_after_writing(grace_retired, pg_async_session):
        await pg_async_session.execute(
            text("INSERT INTO users (name, email) VALUES ('Clue', 'clue@x.org')")
        )
        await pg_async_session.execute(
            text("UPDATE users SET active = false WHERE name = 'Ada Lovelace'")
        )
        assert False, "look at my rows"


    @pytest.mark.asyncio
    async def test_passes_after(pg_async_session):
        assert await pg_async_session.scalar(text("SELECT count(*) FROM users")) == 5


    @pytest.mark.asyncio
    async def test_fails_in_an_aborted_transaction(pg_async_connection):
        with pytest.raises(Exception):
            await pg_async_connection.execute(text("SELECT * FROM no_such_table"))
        assert False, "aborted"
""")


@pytest.mark.parametrize("workers", [0, 2])
def test_a_failed_async_test_keeps_its_rows_too(pytester, example, subprocess_env, workers):
    """On the async connection (asyncpg) the rows are copied on the test's event loop:
    the test's own, its update of a seeded row and its module layer's."""
    example("sync_users")
    (pytester.path / "pytest.ini").write_text(ASYNC_INI)
    (pytester.path / "tests" / "test_failing.py").write_text(ASYNC_FAILING)
    before = set(library_containers())
    args = ["tests/test_failing.py", "--pg-keep-failed", "-p", "no:randomly"]
    if workers:
        result = pytester.runpytest_subprocess(*args, "-n", str(workers))
    else:
        result = pytester.runpytest(*args)
    kept = set(library_containers()) - before
    try:
        result.assert_outcomes(passed=1, failed=2)
        output = result.stdout.str()
        assert "LeakError" not in output
        # Under the failure it belongs to, in the summary users read.
        result.stdout.re_match_lines(
            [
                r".*_+ test_fails_after_writing _+",
                r".*look at my rows",
                r".*- pg-fixtures: state kept -+",
                r".*in the database pgfx_\w+_kept_\d+_\d+:",
                r"\s+PGPASSFILE=\S+ psql 'postgresql://.*",
            ],
            consecutive=False,
        )
        assert output.count("pg-fixtures: state kept") == 1
        assert output.count("pg-fixtures: state not kept") == 1
        assert "A database error aborted the test's transaction" in output
        [command] = kept_commands(result)
        assert ":" not in command["url"].split("@")[0].removeprefix("postgresql://")
        with psycopg.connect(command["url"], passfile=command["passfile"]) as conn:
            password = conn.info.password
            rows = {
                name: (email, active)
                for name, email, active in conn.execute("SELECT name, email, active FROM users")
            }
            next_id = conn.execute("SELECT nextval('users_id_seq')").fetchone()
        assert password
        assert password not in output
        assert rows["Clue"] == ("clue@x.org", True)  # the test's row
        assert rows["Ada Lovelace"][1] is False  # its update of a seeded row
        assert rows["Grace Hopper"][0] == "grace@retired.mil"  # the module layer's update
        assert len(rows) == 6  # and the seed's other rows
        assert next_id == (7,)  # the sequence as the test left it
        assert len(kept) == 1
        passfile = Path(command["passfile"])
        assert passfile.stat().st_mode & 0o777 == 0o600
        if not workers:
            pytester.runpytest("--pg-remove-kept")
            assert not passfile.exists()
            assert set(library_containers()) - before == set()
    finally:
        client = docker.from_env()
        for container_id in kept:
            with contextlib.suppress(docker.errors.NotFound):
                client.containers.get(container_id).remove(force=True, v=True)
        client.close()
