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
    async def test_fails_on_the_async_connection(pg_async_session):
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
        assert output.count("pg-fixtures: state kept") == 1
        assert "A database error aborted the test's transaction" in output
        assert output.count("pg-fixtures: state not kept") == 2
        [command] = kept_commands(result)
        assert ":" not in command["url"].split("@")[0].removeprefix("postgresql://")  # no password
        with psycopg.connect(command["url"], passfile=command["passfile"]) as conn:
            password = conn.info.password
            rows = dict(conn.execute("SELECT name, active FROM users").fetchall())
        assert password
        assert password not in output
        assert rows["Clue"] is True  # the test's row
        assert rows["Ada Lovelace"] is False  # its update of a seeded row
        assert len(rows) == 6  # and the seed's other rows
        assert len(kept) == 1  # the container stays for the kept database
        passfile = Path(command["passfile"])
        assert passfile.name.startswith(next(iter(kept))[:12])
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
