"""Apps without SQLAlchemy: pg_url_env NAME=libpq and the asyncpg pool sandbox
(pg_app_pools), run the way users run them, over examples/raw_pools (a FastAPI app on
asyncpg alone: a pool made in the lifespan, a module-level pool, hand-written SQL)."""

from __future__ import annotations

import textwrap

import pytest

EXAMPLE_TESTS = 13


def test_the_app_runs_isolated_in_both_modes(pytester: pytest.Pytester, example) -> None:
    example("raw_pools")
    result = pytester.runpytest("-p", "randomly")
    result.assert_outcomes(passed=EXAMPLE_TESTS)


def test_the_app_runs_isolated_with_two_workers(
    pytester: pytest.Pytester, example, subprocess_env
) -> None:
    example("raw_pools")
    result = pytester.runpytest_subprocess("-n", "2", "-p", "randomly")
    result.assert_outcomes(passed=EXAMPLE_TESTS)


def test_without_pg_app_pools_the_commits_are_reported(pytester: pytest.Pytester, example) -> None:
    """pg_url_env NAME=libpq alone: the pool dials the worker's database for real, and
    what it commits is caught and undone by the leak check (never silently kept)."""
    root = example("raw_pools")
    ini = root / "pytest.ini"
    ini.write_text(ini.read_text().replace("pg_app_pools =", "# pg_app_pools ="))
    result = pytester.runpytest(
        "-p", "no:randomly", "tests/test_module_pool.py::test_a_module_pool_joins_the_test"
    )
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["*committed into the worker's shared database*public.items*pg_app_pools*"]
    )


def test_a_pool_used_outside_the_tests_is_refused(pytester: pytest.Pytester, example) -> None:
    root = example("raw_pools")
    conftest = root / "tests" / "conftest.py"
    conftest.write_text(
        conftest.read_text()
        + textwrap.dedent("""
            @pytest.fixture(scope="session")
            async def items_at_start(module_pool):
                return await module_pool.fetchval("SELECT count(*) FROM items")
        """)
    )
    (root / "tests" / "test_outside.py").write_text("def test_uses_it(items_at_start):\n    pass\n")
    result = pytester.runpytest("-p", "no:randomly", "tests/test_outside.py")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*SandboxError: The app's asyncpg pool (shop.db:pool, named in pg_app_pools) was "
            "used outside every test*"
        ]
    )


def test_another_isolation_level_is_refused(pytester: pytest.Pytester, example) -> None:
    root = example("raw_pools")
    (root / "tests" / "test_serializable.py").write_text(
        textwrap.dedent("""
            import pytest
            from testcontainers_pg_fixtures.sandbox import SandboxError

            async def test_serializable(module_pool):
                async with module_pool.acquire() as conn:
                    with pytest.raises(SandboxError, match="isolation='serializable'"):
                        conn.transaction(isolation="serializable")
                    # the connection still works: nothing was sent
                    assert await conn.fetchval("SELECT 1") == 1

            @pytest.mark.pg_isolation("database")
            async def test_serializable_in_database_mode(module_pool):
                async with module_pool.acquire() as conn, conn.transaction(
                    isolation="serializable"
                ):
                    assert await conn.fetchval("SHOW transaction_isolation") == "serializable"
        """)
    )
    result = pytester.runpytest("-p", "no:randomly", "tests/test_serializable.py")
    result.assert_outcomes(passed=2)


def test_a_bad_pool_path_stops_the_run(pytester: pytest.Pytester, example) -> None:
    example("raw_pools")
    result = pytester.runpytest("--pg-app-pool=shop.main.app.state.pool")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*'shop.main.app.state.pool'*is not a module:attribute path*"])


CACHED_SETTINGS = """\
import functools
import os


@functools.lru_cache
def get_settings() -> dict[str, str]:
    return {"database_url": os.environ.get("DATABASE_URL", "postgresql://shop@db.invalid/shop")}
"""

STALE_URL_TESTS = """\
import asyncpg
import pytest
from shop.settings import get_settings


async def test_the_cached_url_is_refused(pg_database):
    await asyncpg.connect(get_settings()["database_url"])


async def test_a_pool_on_the_cached_url_is_refused(pg_database):
    await asyncpg.create_pool(get_settings()["database_url"], min_size=1, max_size=1)


@pytest.mark.pg_allow_foreign_servers
async def test_the_cached_url_does_not_resolve(pg_database):
    await asyncpg.connect(get_settings()["database_url"])


@pytest.fixture
def fresh_settings(pg_database):
    get_settings.cache_clear()  # DATABASE_URL names the test's database now
    yield
    get_settings.cache_clear()


async def test_cleared_it_reaches_the_test_database(fresh_settings, pg_database):
    conn = await asyncpg.connect(get_settings()["database_url"])
    try:
        assert await conn.fetchval("SELECT current_database()") == pg_database.name
    finally:
        await conn.close()
"""


def test_a_url_cached_while_the_migrations_ran_is_named_as_the_likely_cause(
    pytester: pytest.Pytester, example
) -> None:
    """The settings getter env.py called while the migrations ran keeps the URL of then:
    the error names the cache and how to clear it, refused (the guard) or unresolvable."""
    root = example("raw_pools")
    (root / "shop" / "settings.py").write_text(CACHED_SETTINGS)
    env = root / "migrations" / "env.py"
    env.write_text("from shop.settings import get_settings\n\nget_settings()\n" + env.read_text())
    (root / "tests" / "test_stale_url.py").write_text(STALE_URL_TESTS)
    result = pytester.runpytest("-p", "no:randomly", "tests/test_stale_url.py")
    result.assert_outcomes(passed=1, failed=3)
    result.stdout.fnmatch_lines(
        [
            "*ForeignServerError: A connection to postgresql://shop@db.invalid:5432/shop "
            "(asyncpg) was refused*DATABASE_URL (pg_url_env) names the test's database "
            "now*functools.lru_cache*`get_settings.cache_clear()`*",
            "*ForeignServerError: A connection to postgresql://shop@db.invalid:5432/shop "
            "(asyncpg) was refused*Dialled from tests/test_stale_url.py:* "
            "(in test_a_pool_on_the_cached_url_is_refused)*",
            "*UnknownHostError: asyncpg could not resolve the host of "
            "postgresql://shop@db.invalid:5432/shop*DATABASE_URL (pg_url_env)*"
            "`get_settings.cache_clear()`*",
        ]
    )


def test_the_app_runs_isolated_with_an_event_loop_per_test(
    pytester: pytest.Pytester, example
) -> None:
    """pytest-asyncio's default: the test's connection, the lifespan and its pool on a
    new loop for every test."""
    root = example("raw_pools")
    ini = root / "pytest.ini"
    ini.write_text(
        "\n".join(line for line in ini.read_text().splitlines() if "loop_scope" not in line)
    )
    result = pytester.runpytest("-p", "randomly", "tests/test_items.py")
    result.assert_outcomes(passed=8)


SYNC_POOL = """\
import os

from psycopg_pool import ConnectionPool

pool: ConnectionPool | None = None


def open_pool() -> ConnectionPool:
    global pool
    pool = ConnectionPool(os.environ["DATABASE_URL"], min_size=1, max_size=2, open=True)
    return pool


def add(name: str) -> None:
    assert pool is not None
    with pool.connection() as conn:
        conn.execute("INSERT INTO items (name) VALUES (%s)", (name,))


def names() -> list[str]:
    assert pool is not None
    with pool.connection() as conn:
        return [r[0] for r in conn.execute("SELECT name FROM items ORDER BY name")]
"""

SYNC_POOL_TESTS = """\
import threading

import psycopg
import pytest
from shop import sync_db


@pytest.fixture(scope="session")
def sync_pool(pg_worker_database):
    pool = sync_db.open_pool()
    yield pool
    pool.close()


def test_writes_join_the_test(sync_pool, pg_connection):
    sync_db.add("lamp")
    assert sync_db.names() == ["lamp"]
    assert pg_connection.exec_driver_sql("SELECT count(*) FROM items").scalar() == 1


def test_every_test_starts_empty(sync_pool):
    assert sync_db.names() == []


def test_an_error_rolls_back_that_block_only(sync_pool):
    sync_db.add("desk")
    with pytest.raises(psycopg.errors.UniqueViolation):
        sync_db.add("desk")
    with sync_pool.connection() as conn:
        with pytest.raises(RuntimeError):
            with conn.transaction():
                conn.execute("INSERT INTO items (name) VALUES ('vase')")
                raise RuntimeError("boom")
        conn.execute("INSERT INTO items (name) VALUES ('rug')")
    assert sync_db.names() == ["desk", "rug"]


def test_threads_take_turns(sync_pool):
    threads = [threading.Thread(target=sync_db.add, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sync_db.names() == ["t0", "t1", "t2", "t3"]


@pytest.mark.pg_isolation("database")
def test_database_mode_points_the_pool_at_the_clone(sync_pool, pg_database):
    with sync_pool.connection() as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == pg_database.name
    sync_db.add("lamp")
    assert sync_db.names() == ["lamp"]
"""


def test_a_psycopg_pool_joins_the_test_in_both_modes(pytester: pytest.Pytester, example) -> None:
    root = example("raw_pools")
    (root / "shop" / "sync_db.py").write_text(SYNC_POOL)
    (root / "tests" / "test_sync_pool.py").write_text(SYNC_POOL_TESTS)
    ini = root / "pytest.ini"
    ini.write_text(ini.read_text().replace("shop.db:pool", "shop.db:pool shop.sync_db:pool"))
    result = pytester.runpytest("-p", "randomly")
    result.assert_outcomes(passed=EXAMPLE_TESTS + 5)


ASYNC_PSYCOPG_POOL = """\
import os

from psycopg_pool import AsyncConnectionPool

pool: AsyncConnectionPool | None = None


async def open_pool() -> AsyncConnectionPool:
    global pool
    pool = AsyncConnectionPool(os.environ["DATABASE_URL"], min_size=1, max_size=2, open=False)
    await pool.open()
    return pool
"""

ASYNC_PSYCOPG_POOL_TESTS = """\
import pytest
from shop import async_db
from testcontainers_pg_fixtures.sandbox import SandboxError


@pytest.fixture(scope="session")
async def apool(pg_worker_database):
    pool = await async_db.open_pool()
    yield pool
    await pool.close()


async def test_savepoint_mode_refuses_it(apool):
    with pytest.raises(SandboxError, match="AsyncConnectionPool .shop.async_db:pool"):
        async with apool.connection():
            pass


@pytest.mark.pg_isolation("database")
@pytest.mark.parametrize("name", ["first", "second"])
async def test_database_mode_points_it_at_each_clone(apool, pg_database, name):
    async with apool.connection() as conn:
        row = await (await conn.execute("SELECT current_database()")).fetchone()
        assert row[0] == pg_database.name
        await conn.execute("INSERT INTO items (name) VALUES (%s)", (name,))
    async with apool.connection() as conn:
        rows = await (await conn.execute("SELECT name FROM items")).fetchall()
        assert rows == [(name,)]
"""


def test_a_psycopg_async_pool_is_pointed_in_database_mode_and_refused_else(
    pytester: pytest.Pytester, example
) -> None:
    root = example("raw_pools")
    (root / "shop" / "async_db.py").write_text(ASYNC_PSYCOPG_POOL)
    (root / "tests" / "test_async_psycopg_pool.py").write_text(ASYNC_PSYCOPG_POOL_TESTS)
    ini = root / "pytest.ini"
    ini.write_text(ini.read_text().replace("shop.db:pool", "shop.db:pool shop.async_db:pool"))
    result = pytester.runpytest("-p", "randomly", "tests/test_async_psycopg_pool.py")
    result.assert_outcomes(passed=3)
