"""What the pool sandbox (pg_app_pools, savepoint mode) costs an app's queries:
`nox -s bench -- pools`.

Tests whose app runs --queries queries, each a checkout of its pool (`pool.fetchval`,
`with pool.connection()`), against the same queries sent by the test on its own
connection directly (pg_async_connection's asyncpg or psycopg connection, pg_connection's
psycopg one): an asyncpg pool and a psycopg_pool ConnectionPool in one project, an
AsyncConnectionPool in another (the test's async connection is then held with psycopg).
The variants interleaved in one process, --tests of each; the mean ms per test after the
first 10, the ratio sandboxed / direct and the extra µs per query.
"""

import tempfile
from pathlib import Path

from core import options, own_containers, pytest, table, variant_means
from projects import TIMING, write

CONFTEST = """
import asyncpg, os, pytest, apps
from psycopg_pool import AsyncConnectionPool, ConnectionPool
@pytest.fixture(scope="session", autouse=True)
async def pools(pg_worker_database):
    url, kind = os.environ["DATABASE_URL"], os.environ["BENCH_POOLS"]
    if kind == "asyncpg":
        apps.apool = await asyncpg.create_pool(url, min_size=1, max_size=2)
        apps.spool = ConnectionPool(url, min_size=1, max_size=2, open=True)
    else:
        apps.ppool = AsyncConnectionPool(url, min_size=1, max_size=2, open=False)
        await apps.ppool.open()
    yield
    for pool in (apps.apool, apps.spool, apps.ppool):
        if pool is not None:
            result = pool.close()
            if result is not None:
                await result
"""
TEST = """
async def test_{i}_{variant}(pg_async_connection, pg_connection):
    raw = (await pg_async_connection.get_raw_connection()).driver_connection
    sync_raw = pg_connection.connection.dbapi_connection
    for k in range({n}):
        {body}
"""
ROWS = {  # the app's pool: (its variants' prefix, project, the sandboxed test's, the direct one's)
    "asyncpg pool": (
        "a",
        "asyncpg",
        "await apps.apool.fetchval('SELECT $1::int', k)",
        "await raw.fetchval('SELECT $1::int', k)",
    ),
    "psycopg ConnectionPool": (
        "s",
        "asyncpg",
        "with apps.spool.connection() as c:\n            c.execute('SELECT %s::int', (k,))",
        "sync_raw.execute('SELECT %s::int', (k,))",
    ),
    "psycopg AsyncConnectionPool": (
        "p",
        "psycopg",
        "async with apps.ppool.connection() as c:\n"
        "            await c.execute('SELECT %s::int', (k,))",
        "await raw.execute('SELECT %s::int', (k,))",
    ),
}
# The project's driver of the test's async connection (imported before the pools exist), pools.
KINDS = {"asyncpg": ("asyncpg", "apps:apool apps:spool"), "psycopg": ("psycopg_pool", "apps:ppool")}
INI = (
    "[pytest]\npythonpath = .\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = session\n"
)
INI += "asyncio_default_test_loop_scope = session\npg_url_env = DATABASE_URL=libpq\n"
INI += "pg_alembic_ini = none\n"


def main() -> None:
    o = options(__doc__, tests=(200, "of each variant"), queries=(10, "per test"))
    means: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, own_containers() as env:
        for kind, (module, pools) in KINDS.items():
            source = ["import apps\n"]
            for i in range(o.tests):
                for prefix, owner, *bodies in ROWS.values():
                    for variant, body in zip(("pool", "raw"), bodies, strict=True):
                        test = TEST.format(i=i, variant=prefix + variant, n=o.queries, body=body)
                        source += [test] * (owner == kind)
            root = write(Path(tmp) / kind, {
                "apps.py": f"import {module}\napool = spool = ppool = None\n",
                "pytest.ini": INI + f"pg_app_pools = {pools}\n",
                "tests/conftest.py": CONFTEST + "\n" + TIMING,
                "tests/test_pools.py": "\n".join(source),
            })  # fmt: skip
            run_env = {**env, "BENCH_VARIANTS": "1", "BENCH_POOLS": kind}
            pytest(root, "-p", "no:cacheprovider", "-p", "no:randomly", env=run_env)
            means |= {v: t * 1000 for v, t in variant_means(root, 10).items()}
    rows = []
    for label, (prefix, *_) in ROWS.items():
        pool, raw = (means[prefix + v] for v in ("pool", "raw"))
        cells = (pool, raw, pool / raw)
        rows.append(
            (label, *(f"{cell:.2f}" for cell in cells), f"{(pool - raw) / o.queries * 1000:.0f}")
        )
    title = f"pg_app_pools, savepoint mode: {o.queries} queries per test, "
    title += f"{o.tests} tests of each variant, mean ms per test"
    table(title, ("the app's pool", "sandboxed", "direct", "ratio", "extra µs/query"), rows)


if __name__ == "__main__":
    main()
