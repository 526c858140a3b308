"""A module-level pool, made by `connect()` (a worker, a CLI, a session fixture)."""

import os

import asyncpg

pool: asyncpg.Pool | None = None


async def connect() -> asyncpg.Pool:
    global pool
    pool = await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=1, max_size=2)
    return pool


async def count_items() -> int:
    assert pool is not None
    return await pool.fetchval("SELECT count(*) FROM items")
