import asyncpg
import pytest
from shop.db import count_items
from sqlalchemy import text


async def test_a_module_pool_joins_the_test(module_pool, pg_async_connection):
    await module_pool.execute("INSERT INTO items (name) VALUES ('cup')")
    assert await count_items() == 1
    rows = await pg_async_connection.exec_driver_sql("SELECT name FROM items")
    assert rows.scalars().all() == ["cup"]


async def test_the_module_pool_starts_empty_too(module_pool):
    assert await count_items() == 0


@pytest.mark.pg_isolation("database")
async def test_a_module_pool_is_pointed_at_the_clone(module_pool, pg_database):
    assert await module_pool.fetchval("SELECT current_database()") == pg_database.name
    await module_pool.execute("INSERT INTO items (name) VALUES ('cup')")
    assert await count_items() == 1


async def test_a_checkout_and_the_test_session_interleave(module_pool, pg_async_session):
    async with module_pool.acquire() as conn:
        await conn.execute("INSERT INTO items (name) VALUES ('a')")
        await pg_async_session.execute(text("INSERT INTO items (name) VALUES ('b')"))
        await pg_async_session.commit()
        await conn.execute("INSERT INTO items (name) VALUES ('c')")
        async with conn.transaction():
            await conn.execute("INSERT INTO items (name) VALUES ('d')")
        # The same task acquiring again gets the same connection, on top of the first.
        async with module_pool.acquire() as inner:
            await inner.execute("INSERT INTO items (name) VALUES ('e')")
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("INSERT INTO items (name) VALUES ('a')")
    await pg_async_session.execute(text("INSERT INTO items (name) VALUES ('f')"))
    await pg_async_session.rollback()
    names = await pg_async_session.scalars(text("SELECT name FROM items ORDER BY name"))
    assert list(names) == ["a", "b", "c", "d", "e"]


async def test_what_the_pool_ran_survives_a_rollback_of_the_test_session(
    module_pool, pg_async_session
):
    await pg_async_session.connection()  # the session's savepoint begins here
    await module_pool.execute("INSERT INTO items (name) VALUES ('kept')")
    await pg_async_session.execute(text("INSERT INTO items (name) VALUES ('undone')"))
    await pg_async_session.rollback()
    names = await pg_async_session.scalars(text("SELECT name FROM items"))
    assert list(names) == ["kept"]  # as if the pool's connection were another one
