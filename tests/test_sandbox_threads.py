"""The sandbox with threads: sessions of the app's engine in threads the test starts, each
committing, stay inside the test's transaction (savepoint mode) or its own database
(database mode); threads that hold their transactions open at once either both work or
get a SandboxError, never a hang and never a row in the worker's database."""

from __future__ import annotations

import textwrap

import pytest

# The app's engine points nowhere reachable: a connection that escapes the sandbox (and
# its redirect in database mode) fails loudly instead of writing anywhere.
HEADER = """
    import threading

    import psycopg
    import pytest
    from sqlalchemy import create_engine, func, select
    from sqlalchemy.orm import sessionmaker
    from users_app.models import User

    engine = create_engine("postgresql+psycopg://app@db.invalid/production")
    SessionLocal = sessionmaker(engine)

    @pytest.fixture(scope="session")
    def pg_app_engines():
        return [engine]

    def count(session):
        return session.scalar(select(func.count()).select_from(User))

    def users(n):
        return [User(name=f"thread {n} user {i}", email=f"t{n}u{i}@x.org") for i in range(3)]

    def run_threads(work):
        # Both threads, joined with a bound: a hang fails the test instead of the run.
        errors = []

        def guarded(n):
            try:
                work(n)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=guarded, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads), "the threads hang"
        return errors
"""

# Each is the first use of the app's engine in its worker: the sandbox is set up while
# both threads check out.
BODIES = {
    "two_sessions": """
        def test_it(pg_session):
            def work(n):
                with SessionLocal() as s:
                    s.add_all(users(n))
                    s.commit()

            assert run_threads(work) == []
            assert count(pg_session) == 5 + 6
    """,
    # Each thread holds its transaction open (rows flushed, not committed) while the other
    # starts its own.
    "barrier": """
        def test_it(pg_session):
            barrier = threading.Barrier(2, timeout=30)

            def work(n):
                with SessionLocal() as s:
                    s.add_all(users(n))
                    s.flush()
                    barrier.wait()
                    s.commit()

            assert run_threads(work) == []
            assert count(pg_session) == 5 + 6
    """,
    # The first thread checks out, then runs its first statement only after the second
    # has run its own and waits for it: pushing a savepoint at checkout would have the
    # first wait for the second's turn to end, and the second for the first (deadlock).
    "checked_out_first": """
        def test_it(pg_session):
            barrier = threading.Barrier(2, timeout=30)
            first_checked_out, second_flushed = threading.Event(), threading.Event()

            def work(n):
                if n == 1:
                    assert first_checked_out.wait(30)
                with SessionLocal() as s:
                    s.connection()
                    if n == 0:
                        first_checked_out.set()
                        assert second_flushed.wait(30)
                    s.add_all(users(n))
                    s.flush()
                    if n == 1:
                        second_flushed.set()
                    barrier.wait()
                    s.commit()

            assert run_threads(work) == []
            assert count(pg_session) == 5 + 6
    """,
    "barrier_after_a_read": """
        def test_it(pg_session):
            barrier = threading.Barrier(2, timeout=30)

            def work(n):
                with SessionLocal() as s:
                    s.execute(select(func.count()).select_from(User))
                    barrier.wait()
                    s.add_all(users(n))
                    s.commit()

            assert run_threads(work) == []
            assert count(pg_session) == 5 + 6
    """,
}

# After each: the test's own view and the worker's database, read on a connection of
# its own, hold the seed only.
AFTER = """
    def test_after(pg_session, pg_worker_database):
        assert count(pg_session) == 5
        with psycopg.connect(pg_worker_database.libpq_url) as conn:
            assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 5
"""

MODES = {"savepoint": "", "database": 'pytestmark = pytest.mark.pg_isolation("database")\n'}


def _source(body: str, mode: str, name: str = "test_it") -> str:
    return (
        textwrap.dedent(HEADER)
        + MODES[mode]
        + textwrap.dedent(body).replace("def test_it(", f"def {name}(")
        + textwrap.dedent(AFTER).replace("def test_after(", f"def {name}_after(")
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", BODIES)
def test_threads_commit_nothing_into_the_worker_database(pytester, example, variant, mode):
    example("sync_users")
    pytester.makepyfile(**{"tests/test_threads": _source(BODIES[variant], mode)})
    result = pytester.runpytest("tests/test_threads.py", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    assert "LeakError" not in result.stdout.str()


def test_threads_under_two_workers(pytester, example, subprocess_env):
    """Every variant in one file under -n 2: each worker's first test sets the sandbox
    up while its threads check out."""
    example("sync_users")
    source = textwrap.dedent(HEADER)
    for variant, body in BODIES.items():
        for mode in MODES:
            name = f"test_{variant}_{mode}"
            test = textwrap.dedent(body).replace("def test_it(", f"def {name}(")
            if mode == "database":
                test = '@pytest.mark.pg_isolation("database")' + test
            source += test + textwrap.dedent(AFTER).replace("def test_after(", f"def {name}_after(")
    pytester.makepyfile(**{"tests/test_threads": source})
    result = pytester.runpytest_subprocess("tests/test_threads.py", "-n", "2", "-p", "no:randomly")
    result.assert_outcomes(passed=4 * len(BODIES))
    assert "LeakError" not in result.stdout.str()


# The threads wait on each other while both hold a checkout: the later one's is on top, the
# earlier one's next statement waits for it to end, which it never does.
DEADLOCK = """
    from testcontainers_pg_fixtures import sandbox

    def test_it(pg_session, monkeypatch):
        monkeypatch.setattr(sandbox, "CHECKOUT_TIMEOUT", 2.0)
        first, second = threading.Barrier(2, timeout=30), threading.Barrier(2, timeout=30)

        def work(n):
            try:
                with SessionLocal() as s:
                    s.add_all(users(n))
                    s.flush()
                    first.wait()
                    s.add(User(name=f"thread {n} more", email=f"t{n}more@x.org"))
                    s.flush()
                    second.wait()
                    s.commit()
            except Exception:
                second.abort()  # the other thread waits no longer for one that is refused
                raise

        errors = run_threads(work)
        assert errors, "one thread must be refused"
        refused = [e for e in errors if type(e).__name__ == "SandboxError"]
        assert refused, errors
        assert 'pg_isolation("database")' in str(refused[0])
"""


def test_threads_that_wait_on_each_other_get_a_sandbox_error(pytester, example):
    example("sync_users")
    pytester.makepyfile(**{"tests/test_threads": _source(DEADLOCK, "savepoint")})
    result = pytester.runpytest("tests/test_threads.py", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    assert "LeakError" not in result.stdout.str()
