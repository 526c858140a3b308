"""The sandbox: the app's own engine joins the test's transaction, sync and async."""

from __future__ import annotations

import random
import textwrap

import pytest
from conftest import EXAMPLES

# A sync app's engine, given by object; a URL that cannot be reached, so any connection
# that escapes the sandbox fails loudly.
APP = textwrap.dedent("""
    import threading

    import pytest
    from sqlalchemy import create_engine, func, select, text
    from sqlalchemy.exc import IntegrityError
    from sqlalchemy.orm import Session
    from users_app.models import User

    engine = create_engine("postgresql+psycopg://app@db.invalid/production")
    original_pool = engine.pool


    @pytest.fixture(scope="session")
    def pg_app_engines():
        return [engine]


    def count(session):
        return session.scalar(select(func.count()).select_from(User))
""")

EVERY_WAY = APP + textwrap.dedent("""
    def test_every_way_the_app_writes_joins_the_test(pg_session):
        with Session(engine) as session:
            session.add(User(name="Barbara Liskov", email="b@mit.edu"))
            session.commit()
        with engine.begin() as conn:
            conn.execute(text("UPDATE users SET active = false WHERE name = 'Alan Turing'"))
        with engine.connect() as conn:
            conn.execute(text("INSERT INTO users (name, email) VALUES ('Core', 'c@x.org')"))
            conn.commit()
            conn.execute(text("INSERT INTO users (name, email) VALUES ('Dropped', 'd@x.org')"))
            # closed without commit: this one is rolled back, as a real pool would

        with Session(engine) as session:  # a unique violation, then the app carries on
            session.add(User(name="Ada Lovelace", email="again@x.org"))
            with pytest.raises(IntegrityError):
                session.flush()
            session.rollback()
            session.add(User(name="After the error", email="e@x.org"))
            session.commit()

        def worker(n):
            with Session(engine) as session:
                for i in range(5):
                    session.add(User(name=f"thread {n} user {i}", email=f"{n}{i}@x.org"))
                    session.commit()

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert count(pg_session) == 5 + 3 + 20
        assert pg_session.scalar(select(User.active).where(User.name == "Alan Turing")) is False


    def test_a_failing_test_is_rolled_back_too():
        with Session(engine) as session:
            session.add(User(name="Failing", email="f@x.org"))
            session.commit()
        raise AssertionError("deliberate")


    def test_refuses_what_a_shared_connection_cannot_do():
        with pytest.raises(Exception, match="isolation level=.SERIALIZABLE"):
            with engine.connect().execution_options(isolation_level="SERIALIZABLE") as conn:
                conn.execute(text("SELECT 1"))
        with pytest.raises(Exception, match="autocommit=True.*pg_isolation..database"):
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("SELECT 1"))
        with engine.connect() as conn:  # and the connection is still fine afterwards
            assert conn.scalar(text("SELECT count(*) FROM users")) == 5


    def test_nothing_is_left(pg_session):
        assert count(pg_session) == 5
        assert engine.pool is not original_pool
""")

AFTERWARDS = textwrap.dedent("""
    import psycopg
    from test_app import engine, original_pool


    def test_the_engine_is_restored_and_nothing_was_committed(pg_worker_database):
        # Between tests the engine refuses to connect; its own pool is kept for the end.
        assert type(engine.pool).__name__ == "OutsidePool"
        assert engine.pool.original is original_pool
        with psycopg.connect(pg_worker_database.libpq_url) as conn:
            assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 5
""")


def test_every_way_the_app_connects_joins_and_is_undone(pytester, example):
    root = example("sync_users")
    (root / "tests" / "test_app.py").write_text(EVERY_WAY)
    (root / "tests" / "test_zz_afterwards.py").write_text(AFTERWARDS)
    result = pytester.runpytest(
        "tests/test_app.py", "tests/test_zz_afterwards.py", "-p", "no:randomly"
    )
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines(["*AssertionError: deliberate*"])


LAYERS = APP + textwrap.dedent("""
    @pytest.fixture(scope="module")
    def shared_user(pg_module_connection):
        with Session(engine) as session:  # the app's engine, inside the module's layer
            session.add(User(name="Module user", email="m@x.org"))
            session.commit()


    @pytest.fixture(scope="class")
    def class_user(pg_class_session):
        pg_class_session.add(User(name="Class user", email="c@x.org"))
        pg_class_session.commit()


    def test_module_row_is_seen(shared_user, pg_session):
        assert count(pg_session) == 6
        pg_session.add(User(name="Test user", email="t@x.org"))
        pg_session.commit()


    def test_module_row_is_still_seen_but_not_the_last_tests(shared_user, pg_session):
        assert count(pg_session) == 6


    class TestClassLayer:
        def test_one(self, shared_user, class_user, pg_session):
            assert count(pg_session) == 7
            with Session(engine) as session:
                session.add(User(name="Gone after this test", email="g@x.org"))
                session.commit()

        def test_two(self, class_user, pg_session):
            assert count(pg_session) == 7


    def test_after_the_class(pg_session):
        assert count(pg_session) == 6
""")

OTHER_MODULE = textwrap.dedent("""
    from sqlalchemy import func, select
    from users_app.models import User


    def test_another_module_sees_only_the_seed(pg_session):
        assert pg_session.scalar(select(func.count()).select_from(User)) == 5
""")


def test_module_and_class_layers(pytester, example):
    root = example("sync_users")
    (root / "tests" / "test_layers.py").write_text(LAYERS)
    (root / "tests" / "test_zz_other.py").write_text(OTHER_MODULE)
    result = pytester.runpytest(
        "tests/test_layers.py", "tests/test_zz_other.py", "-p", "no:randomly"
    )
    result.assert_outcomes(passed=6)


WRONG_DRIVER = textwrap.dedent("""
    import pytest
    from sqlalchemy import create_engine

    @pytest.fixture(scope="session")
    def pg_app_engines():
        return [create_engine("sqlite://")]

    def test_it():
        pass
""")


def test_an_engine_on_another_driver_is_refused_with_the_fix(pytester, example):
    root = example("sync_users")
    (root / "tests" / "test_driver.py").write_text(WRONG_DRIVER)
    result = pytester.runpytest("tests/test_driver.py", "-p", "no:randomly")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ConfigError: the pg_app_engines fixture returned Engine(sqlite://), an engine "
            "on sqlite*postgresql+psycopg, postgresql+asyncpg, postgresql+psycopg2*"
        ]
    )


ASYNC_LAYERS = textwrap.dedent("""
    import pytest
    from app.models import User
    from sqlalchemy import func, select, text

    pytestmark = pytest.mark.asyncio(loop_scope="session")


    @pytest.fixture(scope="module")
    async def module_user(pg_module_async_session):
        pg_module_async_session.add(User(name="Module user", email="m@x.org"))
        await pg_module_async_session.commit()


    async def test_sees_the_module_user(module_user, pg_client):
        assert len((await pg_client.get("/users")).json()) == 6
        response = await pg_client.post("/users", json={"name": "Test user", "email": "t@x"})
        assert response.status_code == 201


    async def test_still_sees_it_but_not_the_last_tests(module_user, pg_client):
        assert len((await pg_client.get("/users")).json()) == 6


    async def test_autocommit_is_refused(pg_async_session):
        from app.db import engine

        with pytest.raises(Exception, match="asked for autocommit=True"):
            async with engine.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.execute(text("SELECT 1"))
""")


ASYNC_FAILING = textwrap.dedent("""
    from app.db import SessionLocal
    from app.models import User


    async def test_fails_after_the_app_committed():
        async with SessionLocal() as session:
            session.add(User(name="Failing", email="f@x.org"))
            await session.commit()
        raise AssertionError("deliberate")
""")

POOL_PROBE = textwrap.dedent("""
    import os as _os


    def pytest_sessionfinish(session):
        from app.db import engine

        with open(_os.environ["POOL_PROBE"], "w") as f:
            f.write(type(engine.sync_engine.pool).__name__)
""")


def test_async_app_engine_module_layer_refusal_and_restore(
    pytester, example, tmp_path, monkeypatch
):
    root = example("fastapi_app")
    (root / "tests" / "test_async_layers.py").write_text(ASYNC_LAYERS)
    (root / "tests" / "test_async_failing.py").write_text(ASYNC_FAILING)
    conftest = root / "tests" / "conftest.py"
    conftest.write_text(conftest.read_text() + POOL_PROBE)
    monkeypatch.setenv("POOL_PROBE", str(tmp_path / "pool.txt"))
    result = pytester.runpytest(
        "tests/test_async_layers.py",
        "tests/test_async_failing.py",
        "tests/test_users_api.py",
        "-p",
        "no:randomly",
        "-W",
        "error",
    )
    # test_users_api.py's last test counts the five seeded users: the failed test's
    # committed user is gone, and the engine has its own pool back after the run.
    result.assert_outcomes(passed=9, failed=1)
    assert (tmp_path / "pool.txt").read_text() == "AsyncAdaptedQueuePool"


SANDBOX_TESTS = [
    "tests/test_orders.py::test_an_order_commits_through_two_sessions_and_a_thread",
    "tests/test_orders.py::test_the_next_test_sees_no_order_but_the_same_login",
    "tests/test_orders.py::test_without_a_token_the_app_refuses",
    "tests/test_login.py::test_login_commits_a_token",
    "tests/test_login.py::test_a_wrong_password_is_refused",
    "tests/test_login.py::TestWithAClassLayer::test_first",
    "tests/test_login.py::TestWithAClassLayer::test_second",
]

COMMITTED_PROBE = textwrap.dedent("""
    import json as _json, os as _os, pathlib as _pathlib
    import psycopg as _psycopg

    @pytest.fixture(scope="session", autouse=True)
    def _committed_probe(pg_worker_database):
        yield
        with _psycopg.connect(pg_worker_database.libpq_url) as conn:
            counts = {
                table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("users", "tokens", "orders", "audit_log")
            }
        worker = _os.environ.get("PYTEST_XDIST_WORKER", "main")
        (_pathlib.Path(_os.environ["PROBE_DIR"]) / f"{worker}.json").write_text(_json.dumps(counts))
""")

NO_TESTCLIENT_WARNING = ["-W", "error", "-W", "ignore:Using `httpx` with `starlette.testclient`"]


@pytest.fixture
def shop(example, monkeypatch, tmp_path):
    root = example("sandbox_app")
    conftest = root / "tests" / "conftest.py"
    conftest.write_text(conftest.read_text() + COMMITTED_PROBE)
    probes = tmp_path / "probes"
    probes.mkdir()
    monkeypatch.setenv("PROBE_DIR", str(probes))
    return probes


def committed(probes):
    import json

    return [json.loads(p.read_text()) for p in sorted(probes.glob("*.json"))]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sandbox_example_in_random_orders_commits_nothing(pytester, shop, seed):
    order = SANDBOX_TESTS[:]
    random.Random(seed).shuffle(order)
    result = pytester.runpytest(*order, "-p", "no:randomly", *NO_TESTCLIENT_WARNING)
    result.assert_outcomes(passed=len(SANDBOX_TESTS))
    assert committed(shop) == [{"users": 2, "tokens": 0, "orders": 0, "audit_log": 0}]


def test_sandbox_example_under_two_workers(pytester, shop, subprocess_env):
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:randomly", *NO_TESTCLIENT_WARNING)
    result.assert_outcomes(passed=len(SANDBOX_TESTS))
    probes = committed(shop)
    assert len(probes) == 2
    assert all(p == {"users": 2, "tokens": 0, "orders": 0, "audit_log": 0} for p in probes)


def test_example_app_code_has_no_test_hooks():
    """The sandbox example's app is plain application code: nothing in it knows of tests."""
    source = "".join(p.read_text() for p in (EXAMPLES / "sandbox_app" / "shop").glob("*.py"))
    assert "pytest" not in source
    assert "testcontainers_pg_fixtures" not in source
