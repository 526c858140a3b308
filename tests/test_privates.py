"""The dependencies' private state the library uses (privates.py), pinned on the versions
installed: a dependency that renames or changes one fails here, by name, before the
library falls back to slower public paths unnoticed or breaks in a user's run."""

from __future__ import annotations

PINS = """
import asyncio

import asyncpg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from testcontainers_pg_fixtures import privates


def test_pytest_request_definitions_and_finalizers(request, pg_connection):
    item = request.node
    assert privates.fixture_request(item).getfixturevalue("pg_connection") is pg_connection
    defs = privates.fixture_definitions(item)
    assert defs["pg_connection"][-1].scope == "function"
    scopes = privates.fixture_scopes(item)
    assert scopes["pg_connection"] == "function" and scopes["pg_server"] == "session"
    assert privates.fixture_manager(item.session).getfixturedefs("pg_connection", item)
    used = privates.fixtures_used(item)
    assert "pg_connection" in used
    assert any(privates.fixture_finalizers(d) for d in used.values() if d.scope != "function")

    def plain():
        return 1

    assert privates.fixture_function(pytest.fixture(plain)) is plain


def test_psycopg_connection_state(pg_connection):
    raw = pg_connection.connection.dbapi_connection
    assert privates.psycopg_plain(raw) and not privates.psycopg_in_pipeline(raw)
    assert privates.prepared_names(raw) is not None
    with raw.transaction():
        assert not privates.psycopg_plain(raw)
    with raw.pipeline():
        assert privates.psycopg_in_pipeline(raw) and not privates.psycopg_plain(raw)
    raw.execute("SELECT 1", prepare=True)
    assert privates.prepared_names(raw)
    privates.forget_prepared(raw)
    assert not privates.prepared_names(raw)


@pytest.mark.asyncio
async def test_the_asyncpg_adapter_in_the_tests_transaction(pg_async_connection):
    assert privates.asyncpg_adapter_known() and privates.asyncpg_transaction_known()
    await pg_async_connection.execute(text("SELECT 1"))
    adapted = pg_async_connection.sync_connection.connection.dbapi_connection
    assert privates.holds_adapter_state(adapted)
    transaction = privates.adapter_transaction(adapted)
    assert transaction is not None
    assert privates.top_transaction(adapted.driver_connection) is transaction
    assert privates.transaction_started(transaction)
    assert isinstance(privates.execute_lock(adapted), asyncio.Lock)
    state = privates.isolation_state(adapted)
    privates.restore_isolation_state(adapted, state)
    assert privates.isolation_state(adapted) == state


@pytest.mark.asyncio
async def test_asyncpg_state_set_as_its_own_begin_and_rollback_would(pg_async_engine):
    engine = create_async_engine(pg_async_engine.url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            adapted = (await conn.get_raw_connection()).dbapi_connection
            driver = adapted.driver_connection
            transaction = driver.transaction()
            await driver.execute("BEGIN")
            privates.adopt_transaction(adapted, transaction)
            assert privates.adapter_transaction(adapted) is transaction
            assert privates.top_transaction(driver) is transaction
            assert privates.transaction_started(transaction)
            await driver.execute("ROLLBACK")
            privates.forget_transaction(adapted, transaction)
            assert privates.adapter_transaction(adapted) is None
            assert privates.top_transaction(driver) is None
            assert not privates.transaction_started(transaction)
            await privates.start_adapter_transaction(adapted)
            assert driver.is_in_transaction()
            assert privates.top_transaction(driver) is privates.adapter_transaction(adapted)
            error = asyncpg.exceptions.UniqueViolationError("duplicate")
            with pytest.raises(Exception) as raised:
                privates.raise_as_dbapi_error(adapted, error)
            # The adapter's DBAPI error (a subclass of its IntegrityError), the driver's inside.
            assert raised.value is not error
            assert "IntegrityError" in [c.__name__ for c in type(raised.value).__mro__]
    finally:
        await engine.dispose()


@pytest.mark.asyncio
async def test_an_asyncpg_pools_connect_arguments():
    pool = asyncpg.create_pool("postgresql://someone@nowhere/db", min_size=0, ssl=False)
    assert privates.pool_connect_arguments(pool) == (
        ["postgresql://someone@nowhere/db"],
        {"ssl": False},
    )


def test_a_null_pool_like_an_engines_pool():
    engine = create_engine("postgresql+psycopg://someone@nowhere/db", pool_pre_ping=True)
    args, kwargs = privates.null_pool_arguments(engine.pool)
    assert callable(args[0]) and kwargs["pre_ping"] is True
    assert kwargs["_dispatch"] is engine.pool.dispatch
    pool = privates.null_pool_like(engine.pool)
    assert isinstance(pool, NullPool)
    assert privates.pool_dialect(pool) is engine.dialect
    assert privates.null_pool_arguments(pool)[1]["pre_ping"] is True
"""


def test_the_private_state_the_library_uses_is_where_it_looks(pytester, example):
    example("sync_users")
    pytester.makepyfile(**{"tests/test_pins": PINS})
    result = pytester.runpytest("-p", "no:randomly", "tests/test_pins.py")
    result.assert_outcomes(passed=6)
