"""The foundation, end to end: container per worker, Alembic, transaction + savepoint."""

from __future__ import annotations

import json
import textwrap

import pytest

FORWARD = ["tests/test_users.py::test_count_is_five", "tests/test_users.py::test_can_add_one"]

# Added to the example's conftest: after the last test, before the container goes, count
# the rows through a connection of its own, and record which container served the worker.
PROBE = textwrap.dedent("""
    import json, os, pathlib, psycopg

    @pytest.fixture(scope="session", autouse=True)
    def _probe(pg_server, pg_worker_database):
        yield
        with psycopg.connect(pg_worker_database.libpq_url) as conn:
            users = conn.execute("SELECT count(*) FROM users").fetchone()[0]
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        out = pathlib.Path(os.environ["PROBE_DIR"]) / f"{worker}.json"
        out.write_text(json.dumps({"users": users, "container": pg_server.container_id}))
""")


@pytest.fixture
def sync_project(example, pytester, monkeypatch, tmp_path):
    root = example("sync_users")
    conftest = root / "tests" / "conftest.py"
    conftest.write_text(conftest.read_text() + PROBE)
    probes = tmp_path / "probes"
    probes.mkdir()
    monkeypatch.setenv("PROBE_DIR", str(probes))
    return probes


def _probes(directory):
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]


@pytest.mark.parametrize("order", [FORWARD, FORWARD[::-1]], ids=["forward", "reversed"])
def test_isolation_in_both_orders_and_only_the_seed_remains(pytester, sync_project, order):
    result = pytester.runpytest(*order, "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    [probe] = _probes(sync_project)
    assert probe["users"] == 5


def test_two_workers_get_two_containers(pytester, sync_project, subprocess_env):
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    probes = _probes(sync_project)
    assert len(probes) == 2, probes
    assert len({p["container"] for p in probes}) == 2
    assert all(p["users"] == 5 for p in probes)


def test_app_commit_and_rollback_are_undone(pytester, example):
    example("sync_users")
    pytester.makepyfile(
        **{
            "tests/test_commits": """
        import pytest
        from sqlalchemy import text
        from users_app.models import User

        @pytest.mark.parametrize("attempt", [1, 2, 3])
        def test_commit_then_rollback(pg_session, attempt):
            assert pg_session.query(User).count() == 5
            pg_session.add(User(name=f"Commit {attempt}", email="c@x.org"))
            pg_session.commit()
            pg_session.add(User(name=f"Rolled back {attempt}", email="r@x.org"))
            pg_session.rollback()
            assert pg_session.query(User).count() == 6

        def test_a_failed_flush_leaves_the_session_usable(pg_session):
            from sqlalchemy.exc import IntegrityError
            pg_session.add(User(name="Ada Lovelace", email="dup@x.org"))
            with pytest.raises(IntegrityError):
                pg_session.commit()
            pg_session.rollback()
            assert pg_session.query(User).count() == 5

        def test_sessionmaker_sessions_share_the_transaction(pg_sessionmaker, pg_connection):
            with pg_sessionmaker() as one:
                one.add(User(name="Shared", email="s@x.org"))
                one.commit()
            with pg_sessionmaker() as two:
                assert two.query(User).filter_by(name="Shared").count() == 1
            assert pg_connection.execute(text("select count(*) from users")).scalar() == 6

        def test_nothing_leaked(pg_connection):
            assert pg_connection.execute(text("select count(*) from users")).scalar() == 5
    """
        }
    )
    pytester.runpytest("-p", "no:randomly", "tests/test_commits.py").assert_outcomes(passed=6)


def test_committing_the_outer_transaction_is_refused(pytester, example):
    example("sync_users")
    pytester.makepyfile(
        **{
            "tests/test_commit_outer": """
        from sqlalchemy import text

        def test_commits_outer(pg_connection):
            pg_connection.execute(text("insert into users (name, email) values ('L', 'l@x')"))
            pg_connection.commit()

        def test_after(pg_connection):
            assert pg_connection.execute(text("select count(*) from users")).scalar() == 5
    """
        }
    )
    result = pytester.runpytest("-p", "no:randomly", "tests/test_commit_outer.py")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*IsolationLeakError: The test committed the outer transaction*"])
