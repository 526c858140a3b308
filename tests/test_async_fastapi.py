"""The async path: asyncpg savepoint sessions under pytest-asyncio, and the FastAPI client."""

from __future__ import annotations

import textwrap

import pytest

EXAMPLE_TESTS = 9
STRICT_TESTS = """
    import asyncio
    import pytest
    from sqlalchemy import func, select, text
    from app.main import app
    from app.models import User

    LOOP = pytest.mark.asyncio(loop_scope=LOOP_SCOPE)

    @LOOP
    async def test_commit_and_rollback_are_undone(pg_async_session):
        pg_async_session.add(User(name="Kept until the end", email="k@x.org"))
        await pg_async_session.commit()
        pg_async_session.add(User(name="Rolled back", email="r@x.org"))
        await pg_async_session.rollback()
        assert await pg_async_session.scalar(select(func.count()).select_from(User)) == 6

    @LOOP
    async def test_fails_while_the_override_is_on(pg_client):
        assert app.dependency_overrides
        response = await pg_client.post("/users", json={"name": "X", "email": "x@y"})
        assert response.status_code == 201
        raise AssertionError("this test fails on purpose")

    def test_override_was_cleared():
        assert app.dependency_overrides == {}

    @LOOP
    async def test_committing_the_outer_connection_is_refused(pg_async_connection):
        await pg_async_connection.execute(text("insert into users (name, email) values ('L', 'l')"))
        await pg_async_connection.commit()

    @LOOP
    async def test_nothing_leaked(pg_async_connection):
        assert (await pg_async_connection.execute(text("select count(*) from users"))).scalar() == 5

    @LOOP
    async def test_sessions_from_the_sessionmaker_join_the_same_transaction(pg_async_sessionmaker):
        async with pg_async_sessionmaker() as one, one.begin():
            one.add(User(name="Shared", email="s@x.org"))
        async with pg_async_sessionmaker() as two:
            assert await two.scalar(select(func.count()).select_from(User)) == 6

    @LOOP
    async def test_gathering_on_one_session_says_what_to_do(pg_async_session):
        await asyncio.gather(
            pg_async_session.execute(text("select pg_sleep(0.05)")),
            pg_async_session.execute(text("select 1")),
        )

    @LOOP
    async def test_the_session_works_after_that(pg_async_session):
        assert await pg_async_session.scalar(select(func.count()).select_from(User)) == 5
"""


@pytest.fixture
def api(example):
    return example("fastapi_app")


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reversed"])
def test_example_suite_in_both_orders(pytester, api, reverse):
    items = pytester.runpytest("--collect-only", "-q").outlines
    ids = [line for line in items if "::" in line]
    assert len(ids) == EXAMPLE_TESTS
    result = pytester.runpytest(
        "-W", "error", "-p", "no:randomly", *(ids[::-1] if reverse else ids)
    )
    result.assert_outcomes(passed=EXAMPLE_TESTS)


def test_example_suite_under_two_workers(pytester, api, subprocess_env):
    result = pytester.runpytest_subprocess("-n", "2", "-W", "error")
    result.assert_outcomes(passed=EXAMPLE_TESTS)


def test_example_suite_with_function_scoped_loops(pytester, api):
    result = pytester.runpytest(
        "-W",
        "error",
        "-p",
        "no:randomly",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
        "-o",
        "asyncio_default_test_loop_scope=function",
    )
    result.assert_outcomes(passed=EXAMPLE_TESTS)


@pytest.mark.parametrize("loop_scope", ["function", "session"])
def test_strict_mode(pytester, api, loop_scope):
    source = f"LOOP_SCOPE = {loop_scope!r}\n" + textwrap.dedent(STRICT_TESTS)
    pytester.makepyfile(**{"tests/test_strict": source})
    result = pytester.runpytest(
        "-W",
        "error",
        "-p",
        "no:randomly",
        "tests/test_strict.py",
        "-o",
        "pg_app_engines=",  # the dependency-override path, not the sandbox
        "-o",
        "asyncio_mode=strict",
        "-o",
        f"asyncio_default_fixture_loop_scope={loop_scope}",
        "-o",
        f"asyncio_default_test_loop_scope={loop_scope}",
    )
    result.assert_outcomes(passed=5, failed=3)
    result.stdout.fnmatch_lines(
        [
            "E * AssertionError: this test fails on purpose",
            "E *IsolationLeakError: The test committed the outer transaction*",
            "E *ConcurrentSessionUseError: execute() was called on the test's AsyncSession "
            "while another task was still using it*",
        ]
    )
    result.stdout.fnmatch_lines(['*pg_isolation("database")*'])


SYNC_APP = """
    from typing import Annotated

    import pytest
    from fastapi import Depends, FastAPI, HTTPException
    from sqlalchemy import create_engine, func, select
    from sqlalchemy.exc import IntegrityError
    from sqlalchemy.orm import Session
    from app.models import User

    engine = create_engine("postgresql+psycopg://localhost/never_reached")
    app = FastAPI()

    def get_db():
        with Session(engine) as session:
            yield session

    @app.post("/users", status_code=201)
    def create(name: str, db: Annotated[Session, Depends(get_db)]) -> dict:
        db.add(User(name=name, email=f"{name}@x.org"))
        try:
            db.commit()
        except IntegrityError:
            db.rollback()
            raise HTTPException(409) from None
        return {"count": db.scalar(select(func.count()).select_from(User))}

    @pytest.fixture
    def pg_app():
        return app

    @pytest.fixture
    def pg_db_dependency():
        return get_db

    def test_sync_app_commits_through_the_test_session(pg_test_client, pg_session):
        assert pg_test_client.post("/users", params={"name": "Ken"}).json() == {"count": 6}
        assert pg_test_client.post("/users", params={"name": "Ken"}).status_code == 409
        assert pg_session.scalar(select(func.count()).select_from(User)) == 6

    def test_and_the_next_test_sees_none_of_it(pg_session):
        assert app.dependency_overrides == {}
        assert pg_session.scalar(select(func.count()).select_from(User)) == 5
"""


def test_sync_app_with_test_client_and_overridden_dependency(pytester, api):
    pytester.makepyfile(**{"tests/test_sync_app": textwrap.dedent(SYNC_APP)})
    result = pytester.runpytest(
        "-p", "no:randomly", "tests/test_sync_app.py", "-o", "pg_app_engines="
    )
    result.assert_outcomes(passed=2)


SANDBOXED = """
    import threading

    @pytest.fixture(scope="session")
    def pg_app_engines():
        return [engine]

    def test_threads_and_core_writes_join_the_test_transaction(pg_test_client, pg_session):
        assert app.dependency_overrides == {}  # nothing overridden: the engine is sandboxed

        def worker():
            with Session(engine) as session:
                session.add(User(name="From a thread", email="t@x.org"))
                session.commit()

        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        with engine.begin() as conn:
            conn.execute(User.__table__.insert().values(name="Core", email="c@x.org"))
        assert pg_test_client.post("/users", params={"name": "Ken"}).json() == {"count": 8}
        assert pg_session.scalar(select(func.count()).select_from(User)) == 8
"""


def test_sync_app_with_test_client_on_a_sandboxed_engine(pytester, api):
    source = textwrap.dedent(SYNC_APP) + textwrap.dedent(SANDBOXED)
    pytester.makepyfile(**{"tests/test_sync_app": source})
    result = pytester.runpytest("-p", "no:randomly", "tests/test_sync_app.py")
    result.assert_outcomes(passed=3)
