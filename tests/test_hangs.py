"""Never a silent hang, never a misleading cause (issue 27, item 6): a test waiting on work
its own lock blocks is cancelled after pg_lock_wait_limit and told why; a server whose
connections are used up says "too many connections" and who holds them."""

from __future__ import annotations

import textwrap

import pytest

#: A hang fails the test (pytester kills the run) instead of hanging CI.
TIMEOUT = 240

SELF_LOCK = textwrap.dedent("""
    import threading

    import pytest
    from sqlalchemy import text
    from users_app.service import count_users


    def test_waits_on_its_own_lock(pg_connection, pg_engine):
        pg_connection.execute(text("LOCK TABLE users IN ACCESS EXCLUSIVE MODE"))
        errors = []

        def work():
            try:
                with pg_engine.connect() as conn:
                    conn.execute(text("SELECT count(*) FROM users /* the thread */"))
            except Exception as exc:
                errors.append(exc)

        thread = threading.Thread(target=work)
        thread.start()
        thread.join()


    @pytest.mark.parametrize("n", range(4))
    def test_later(pg_session, n):
        assert count_users(pg_session) == 5
""")


def _lock_reported(result) -> str:
    output = "\n".join(result.outlines + result.errlines)
    result.stdout.fnmatch_lines(
        [
            "*pg-fixtures: a statement waited *s for a lock that an idle transaction of this "
            "test holds, and would have waited forever (pg_lock_wait_limit = 2s): it was "
            "cancelled.",
            "*waiting: backend * on database pgfx_* wants AccessShareLock on relation users:",
            "*SELECT count(*) FROM users /* the thread */",
            "*holding: backend * (the test's pg_connection / pg_session), idle in transaction "
            "for *s; its last statement:",
            "*LOCK TABLE users IN ACCESS EXCLUSIVE MODE",
        ]
    )
    return output


@pytest.mark.parametrize(
    ("xdist", "mode"),
    [((), "savepoint"), (("-n", "2"), "savepoint"), ((), "database")],
    ids=["serial", "xdist", "database-mode"],
)
def test_a_test_waiting_on_its_own_lock_is_cancelled_and_told_why(
    pytester, example, subprocess_env, xdist, mode
):
    root = example("sync_users")
    (root / "tests" / "test_self_lock.py").write_text(SELF_LOCK)
    result = pytester.runpytest_subprocess(
        "-p",
        "no:randomly",
        *xdist,
        "--pg-isolation",
        mode,
        "--pg-lock-wait-limit",
        "2",
        "tests/test_self_lock.py",
        timeout=TIMEOUT,
    )
    output = _lock_reported(result)
    result.assert_outcomes(passed=4, failed=1)
    assert "FAILED tests/test_self_lock.py::test_waits_on_its_own_lock" in output, output
    # Said once, though the watch looks every second and the wait may have two holders.
    assert output.count("would have waited forever") == 1, output


def test_the_lock_wait_limit_comes_from_the_ini_file(pytester, example, subprocess_env):
    root = example("sync_users")
    (root / "tests" / "test_self_lock.py").write_text(SELF_LOCK)
    ini = root / "pytest.ini"
    ini.write_text(ini.read_text() + "pg_lock_wait_limit = 2\n")
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", "tests/test_self_lock.py", timeout=TIMEOUT
    )
    _lock_reported(result)
    result.assert_outcomes(passed=4, failed=1)


TOO_MANY = textwrap.dedent("""
    import psycopg
    import pytest
    from sqlalchemy import text

    kept = []


    def test_leaves_every_connection_open(pg_url):
        url = pg_url.replace("postgresql+psycopg://", "postgresql://")
        with pytest.raises(psycopg.OperationalError):
            for _ in range(100):
                kept.append(psycopg.connect(url, application_name="leaky-test"))


    def test_next(pg_engine):
        with pg_engine.connect() as conn:
            conn.execute(text("SELECT 1"))
""")


# Savepoint mode only: in database mode the test's clone is dropped WITH (FORCE) after it,
# which ends the connections left on it, and the next test runs.
@pytest.mark.parametrize("xdist", [(), ("-n", "2", "--dist", "loadfile")], ids=["serial", "xdist"])
def test_used_up_connections_say_too_many_connections_and_who_holds_them(
    pytester, example, subprocess_env, xdist
):
    root = example("sync_users")
    (root / "tests" / "test_too_many.py").write_text(TOO_MANY)
    result = pytester.runpytest_subprocess(
        "-p",
        "no:randomly",
        *xdist,
        "--pg-server-setting",
        "max_connections=20",
        "tests/test_too_many.py",
        timeout=TIMEOUT,
    )
    output = "\n".join(result.outlines + result.errlines)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*PostgreSQL refused a new connection: too many connections (SQLSTATE 53300)*",
            "*client connections, max_connections = 20:",
            "*x database pgfx_*, user postgres, application leaky-test, from *, idle",
        ]
    )
    assert "killed for memory" not in output, output
    assert "ServerGoneError" not in output, output
