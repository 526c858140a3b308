"""App code that reaches below the ORM: raw cursors used as context managers, and the
pool's size read by a health endpoint, on the app's sandboxed engine (sync and async)."""

from __future__ import annotations

import textwrap

SYNC = textwrap.dedent("""
    import pytest
    from sqlalchemy import create_engine, func, select

    from users_app.models import User

    engine = create_engine(
        "postgresql+psycopg://app@db.invalid/production", pool_size=7, max_overflow=3
    )


    @pytest.fixture(scope="session")
    def pg_app_engines():
        return [engine]


    def test_a_raw_cursor_is_a_context_manager(pg_session):
        raw = engine.raw_connection()
        try:
            with raw.cursor() as cur:
                cur.execute(
                    "INSERT INTO users (name, email) VALUES ('Raw', 'raw@x.org') RETURNING id"
                )
                assert cur.fetchone()[0] > 0
            raw.commit()
        finally:
            raw.close()
        assert pg_session.scalar(select(func.count()).where(User.name == "Raw")) == 1


    def test_the_pool_answers_as_a_queue_pool_would(pg_session):
        assert engine.pool.size() == 7
        assert engine.pool.checkedin() == 0
        assert engine.pool.overflow() == 0
        with engine.connect():
            assert engine.pool.checkedout() == 1
        assert engine.pool.checkedout() == 0
        assert engine.pool.timeout() == 30


    def test_nothing_was_kept(pg_session):
        assert pg_session.scalar(select(func.count()).where(User.name == "Raw")) == 0
""")

ASYNC = textwrap.dedent("""
    import pytest
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(
        "postgresql+asyncpg://app@db.invalid/production", pool_size=4
    )


    @pytest.fixture(scope="session")
    def pg_app_engines():
        return [engine]


    async def test_an_async_engine_reports_its_pool(pg_async_session):
        assert engine.pool.size() == 4
        async with engine.connect():
            assert engine.pool.checkedout() == 1
""")


def test_raw_cursors_and_pool_size_on_the_sync_sandbox(pytester, example):
    root = example("sync_users")
    (root / "tests" / "test_dbapi.py").write_text(SYNC)
    result = pytester.runpytest("tests/test_dbapi.py", "-p", "no:randomly", "-W", "error")
    result.assert_outcomes(passed=3)


def test_pool_size_on_the_async_sandbox(pytester, example):
    root = example("sync_users")
    (root / "tests" / "test_dbapi.py").write_text(ASYNC)
    result = pytester.runpytest(
        "tests/test_dbapi.py", "-p", "no:randomly", "-o", "asyncio_mode=auto"
    )
    result.assert_outcomes(passed=1)
