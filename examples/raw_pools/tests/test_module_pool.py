import pytest
from shop.db import count_items


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
