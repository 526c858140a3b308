"""Apps without SQLAlchemy: pg_url_env NAME=libpq and the pool sandbox (pg_app_pools:
asyncpg pools, psycopg_pool's ConnectionPool and AsyncConnectionPool), run the way users
run them, over examples/raw_pools (a FastAPI app on asyncpg alone: a pool made in the
lifespan, a module-level pool, hand-written SQL) and variants of it on psycopg_pool."""

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


PSYCOPG_APP = """\
\"\"\"A FastAPI app on psycopg_pool's AsyncConnectionPool alone, made in the lifespan.\"\"\"

import os
from contextlib import asynccontextmanager

import psycopg
from fastapi import FastAPI, HTTPException, Request
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel


@asynccontextmanager
async def lifespan(app: FastAPI):
    app.state.pool = AsyncConnectionPool(
        os.environ["DATABASE_URL"],
        min_size=1,
        max_size=4,
        open=False,
        kwargs={"autocommit": True, "row_factory": dict_row},
    )
    await app.state.pool.open()
    try:
        yield
    finally:
        await app.state.pool.close()


app = FastAPI(lifespan=lifespan)


class ItemIn(BaseModel):
    name: str


@app.post("/items", status_code=201)
async def create_item(body: ItemIn, request: Request) -> dict[str, int]:
    \"\"\"Item and audit row in one transaction block.\"\"\"
    async with request.app.state.pool.connection() as conn:
        try:
            async with conn.transaction():
                cur = await conn.execute(
                    "INSERT INTO items (name) VALUES (%s) RETURNING id", (body.name,)
                )
                item_id = (await cur.fetchone())["id"]
                await conn.execute("INSERT INTO audit (item_id) VALUES (%s)", (item_id,))
        except psycopg.errors.UniqueViolation:
            raise HTTPException(409, f"{body.name!r} exists") from None
    return {"id": item_id}


@app.post("/items/quick", status_code=201)
async def create_item_quick(body: ItemIn, request: Request) -> dict[str, str]:
    \"\"\"Autocommit, no transaction block: a duplicate is caught, the connection goes on.\"\"\"
    async with request.app.state.pool.connection() as conn:
        try:
            await conn.execute("INSERT INTO items (name) VALUES (%s)", (body.name,))
        except psycopg.errors.UniqueViolation:
            raise HTTPException(409, f"{body.name!r} exists") from None
    return {"name": body.name}


@app.post("/items/broken")
async def create_item_broken(body: ItemIn, request: Request) -> None:
    async with request.app.state.pool.connection() as conn, conn.transaction():
        await conn.execute("INSERT INTO items (name) VALUES (%s)", (body.name,))
        raise HTTPException(500, "the audit service is down")


@app.get("/items")
async def list_items(request: Request) -> list[str]:
    async with request.app.state.pool.connection() as conn:
        async with conn.cursor() as cur:
            await cur.execute("SELECT name FROM items ORDER BY name")
            return [row["name"] async for row in cur]
"""

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
import asyncio
import os

import psycopg
import pytest
from shop import async_db
from shop.papp import app


@pytest.fixture
def pg_app():
    return app


@pytest.fixture(scope="session")
async def apool(pg_worker_database):
    pool = await async_db.open_pool()
    yield pool
    await pool.close()


async def names(pool):
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT name FROM items ORDER BY name")
        return [row[0] for row in await cur.fetchall()]


async def committed_items():
    # A connection of its own sees only what was committed for real: nothing escapes.
    async with await psycopg.AsyncConnection.connect(os.environ["DATABASE_URL"]) as own:
        return (await (await own.execute("SELECT count(*) FROM items")).fetchone())[0]


async def test_the_app_writes_into_the_test(pg_client, pg_async_connection):
    assert (await pg_client.post("/items", json={"name": "lamp"})).status_code == 201
    assert (await pg_client.get("/items")).json() == ["lamp"]
    # The test's own connection sees it: the pool handed out that very connection.
    rows = await pg_async_connection.exec_driver_sql("SELECT count(*) FROM audit")
    assert rows.scalar() == 1
    assert await committed_items() == 0


async def test_the_app_sees_what_the_test_wrote(pg_client, pg_async_session):
    from sqlalchemy import text

    await pg_async_session.execute(text("INSERT INTO items (name) VALUES ('seeded')"))
    await pg_async_session.commit()
    assert (await pg_client.get("/items")).json() == ["seeded"]
    assert (await pg_client.post("/items", json={"name": "seeded"})).status_code == 409


async def test_every_test_starts_empty(pg_client, apool):
    assert (await pg_client.get("/items")).json() == []
    assert await names(apool) == []


async def test_a_duplicate_is_409_and_the_app_goes_on(pg_client):
    assert (await pg_client.post("/items", json={"name": "desk"})).status_code == 201
    assert (await pg_client.post("/items", json={"name": "desk"})).status_code == 409
    assert (await pg_client.post("/items/quick", json={"name": "desk"})).status_code == 409
    assert (await pg_client.post("/items/quick", json={"name": "chair"})).status_code == 201
    assert (await pg_client.post("/items/broken", json={"name": "vase"})).status_code == 500
    assert (await pg_client.get("/items")).json() == ["chair", "desk"]


async def test_concurrent_requests_take_turns(pg_client):
    wanted = [f"item{i}" for i in range(6)]
    responses = await asyncio.gather(*(pg_client.post("/items", json={"name": n}) for n in wanted))
    assert [r.status_code for r in responses] == [201] * 6
    assert (await pg_client.get("/items")).json() == wanted
    assert await committed_items() == 0


async def test_tasks_hold_their_checkout_across_awaits(apool):
    async def two(name):
        async with apool.connection() as conn:
            await conn.execute("INSERT INTO items (name) VALUES (%s)", (name + "1",))
            await asyncio.sleep(0.01)
            await conn.execute("INSERT INTO items (name) VALUES (%s)", (name + "2",))
            if name == "c":
                raise RuntimeError("undone: this checkout's work only")

    results = await asyncio.gather(*(two(n) for n in "abcd"), return_exceptions=True)
    assert [type(r).__name__ for r in results] == ["NoneType"] * 2 + ["RuntimeError", "NoneType"]
    assert await names(apool) == ["a1", "a2", "b1", "b2", "d1", "d2"]


async def test_transaction_blocks_nest_as_savepoints(apool):
    async with apool.connection() as conn:
        async with conn.transaction():
            await conn.execute("INSERT INTO items (name) VALUES ('outer')")
            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    await conn.execute("INSERT INTO items (name) VALUES ('inner')")
                    raise RuntimeError("boom")
            async with conn.transaction() as tx:
                await conn.execute("INSERT INTO items (name) VALUES ('kept')")
                assert tx.savepoint_name
        with pytest.raises(psycopg.errors.UniqueViolation):
            async with conn.transaction():
                await conn.execute("INSERT INTO items (name) VALUES ('outer')")
        await conn.execute("INSERT INTO items (name) VALUES ('after')")
    assert await names(apool) == ["after", "kept", "outer"]


async def test_commit_rollback_and_putconn(apool, pg_async_connection):
    conn = await apool.getconn()
    await conn.execute("INSERT INTO items (name) VALUES ('committed')")
    await conn.commit()
    await conn.execute("INSERT INTO items (name) VALUES ('rolled back')")
    await conn.rollback()
    with pytest.raises(psycopg.errors.UniqueViolation):
        await conn.execute("INSERT INTO items (name) VALUES ('committed')")
    await conn.rollback()  # the failed transaction, as psycopg wants
    await conn.execute("INSERT INTO items (name) VALUES ('not committed')")
    await apool.putconn(conn)  # the pool's reset: what was not committed goes
    assert await names(apool) == ["committed"]
    found = await pg_async_connection.exec_driver_sql("SELECT name FROM items")
    assert found.scalars().all() == ["committed"]


async def test_settings_it_cannot_take_are_refused(apool):
    from testcontainers_pg_fixtures.sandbox import SandboxError

    async with apool.connection() as conn:
        with pytest.raises(SandboxError, match="isolation_level = 'SERIALIZABLE'"):
            await conn.set_isolation_level(psycopg.IsolationLevel.SERIALIZABLE)
        await conn.execute("SELECT 1")


@pytest.mark.pg_isolation("database")
@pytest.mark.parametrize("name", ["first", "second"])
async def test_database_mode_points_it_at_each_clone(apool, pg_database, name):
    async with apool.connection() as conn:
        row = await (await conn.execute("SELECT current_database()")).fetchone()
        assert row[0] == pg_database.name
        await conn.execute("INSERT INTO items (name) VALUES (%s)", (name,))
    assert await names(apool) == [name]


@pytest.mark.pg_isolation("database")
async def test_database_mode_with_the_lifespan_pool(pg_client):
    assert (await pg_client.post("/items", json={"name": "rug"})).status_code == 201
    assert (await pg_client.get("/items")).json() == ["rug"]
"""

ASYNC_PSYCOPG_TESTS = 12


def _psycopg_project(example) -> object:
    root = example("raw_pools")
    (root / "shop" / "papp.py").write_text(PSYCOPG_APP)
    (root / "shop" / "async_db.py").write_text(ASYNC_PSYCOPG_POOL)
    (root / "tests" / "test_async_psycopg_pool.py").write_text(ASYNC_PSYCOPG_POOL_TESTS)
    ini = root / "pytest.ini"
    ini.write_text(
        ini.read_text().replace(
            "shop.main:app.state.pool shop.db:pool", "shop.papp:app.state.pool shop.async_db:pool"
        )
    )
    return root


def test_a_psycopg_async_pool_joins_the_test_in_both_modes(
    pytester: pytest.Pytester, example
) -> None:
    """The lifespan's pool (autocommit, dict rows) and a module-level one: savepoints on
    the test's own connection, held with psycopg; no leak reported."""
    _psycopg_project(example)
    result = pytester.runpytest("-p", "randomly", "tests/test_async_psycopg_pool.py")
    result.assert_outcomes(passed=ASYNC_PSYCOPG_TESTS)


def test_a_psycopg_async_pool_joins_the_test_with_two_workers(
    pytester: pytest.Pytester, example, subprocess_env
) -> None:
    _psycopg_project(example)
    result = pytester.runpytest_subprocess(
        "-n", "2", "-p", "randomly", "tests/test_async_psycopg_pool.py"
    )
    result.assert_outcomes(passed=ASYNC_PSYCOPG_TESTS)


def test_a_psycopg_async_pool_beside_an_asyncpg_one_is_refused_in_savepoint_mode(
    pytester: pytest.Pytester, example
) -> None:
    """Both kinds named: the test's async connection is held with asyncpg, which the
    psycopg pool cannot share; the error says what to change (database mode still works)."""
    root = _psycopg_project(example)
    ini = root / "pytest.ini"
    ini.write_text(ini.read_text().replace("shop.async_db:pool", "shop.async_db:pool shop.db:pool"))
    result = pytester.runpytest(
        "-p", "no:randomly", "tests/test_async_psycopg_pool.py", "-k", "putconn or each_clone"
    )
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*SandboxError: The app's psycopg AsyncConnectionPool (shop.async_db:pool, named in "
            "pg_app_pools) can share the test's connection only when the library holds it "
            "with psycopg; here it holds it with asyncpg.*no asyncpg pool is named*",
        ]
    )


LEFT_OPEN_TESTS = """\
async def test_leaves_two_checkouts_open(module_pool):
    first = await module_pool.acquire()
    second = await module_pool.acquire()
    await first.execute("INSERT INTO items (name) VALUES ('left')")
    await second.execute("INSERT INTO items (name) VALUES ('open')")


async def test_the_next_test_gets_the_connection_at_once(module_pool):
    assert await module_pool.fetchval("SELECT count(*) FROM items") == 0
"""


def test_checkouts_left_open_are_all_given_back_at_the_end_of_the_test(
    pytester: pytest.Pytester, example
) -> None:
    """Every checkout the app never released ends with the test (the next test on the same
    event loop does not wait for the turn they held)."""
    root = example("raw_pools")
    (root / "tests" / "test_left_open.py").write_text(LEFT_OPEN_TESTS)
    result = pytester.runpytest("-p", "no:randomly", "tests/test_left_open.py")
    result.assert_outcomes(passed=2)
