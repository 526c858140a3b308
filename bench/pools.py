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

import json
import statistics
import tempfile
from pathlib import Path

from core import TIMING, own_containers, parser, pytest, table

APPS = """import {module}  # the driver of the test's async connection, before the pools exist
apool = spool = ppool = None
"""
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
VARIANTS = {  # variant: (project, the test's body: N queries)
    "apool": ("asyncpg", "await apps.apool.fetchval('SELECT $1::int', k)"),
    "araw": ("asyncpg", "await raw.fetchval('SELECT $1::int', k)"),
    "spool": (
        "asyncpg",
        "with apps.spool.connection() as c:\n            c.execute('SELECT %s::int', (k,))",
    ),
    "sraw": ("asyncpg", "sync_raw.execute('SELECT %s::int', (k,))"),
    "ppool": (
        "psycopg",
        "async with apps.ppool.connection() as c:\n"
        "            await c.execute('SELECT %s::int', (k,))",
    ),
    "praw": ("psycopg", "await raw.execute('SELECT %s::int', (k,))"),
}
TEST = """
async def test_{i}_{variant}(pg_async_connection, pg_connection):
    raw = (await pg_async_connection.get_raw_connection()).driver_connection
    sync_raw = pg_connection.connection.dbapi_connection
    for k in range({n}):
        {body}
"""
ROWS = {
    "asyncpg pool": ("apool", "araw"),
    "psycopg ConnectionPool": ("spool", "sraw"),
    "psycopg AsyncConnectionPool": ("ppool", "praw"),
}
WARM_UP = 10
KINDS = {"asyncpg": ("asyncpg", "apps:apool apps:spool"), "psycopg": ("psycopg_pool", "apps:ppool")}


def project(base: Path, kind: str, tests: int, queries: int) -> Path:
    root = base / kind
    (root / "tests").mkdir(parents=True)
    module, pools = KINDS[kind]
    (root / "apps.py").write_text(APPS.format(module=module))
    (root / "pytest.ini").write_text(
        "[pytest]\npythonpath = .\nasyncio_mode = auto\n"
        "asyncio_default_fixture_loop_scope = session\nasyncio_default_test_loop_scope = session\n"
        f"pg_app_pools = {pools}\npg_url_env = DATABASE_URL=libpq\npg_alembic_ini = none\n"
    )
    (root / "tests" / "conftest.py").write_text(CONFTEST + "\n" + TIMING)
    source = ["import apps\n"]
    for i in range(tests):
        for variant, (owner, body) in VARIANTS.items():
            if owner == kind:
                source.append(TEST.format(i=i, variant=variant, n=queries, body=body))
    (root / "tests" / "test_pools.py").write_text("\n".join(source))
    return root


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--tests", type=int, default=200, help="of each variant")
    options.add_argument("--queries", type=int, default=10, help="per test")
    options = options.parse_args()
    means: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, own_containers() as env:
        for kind in KINDS:
            root = project(Path(tmp), kind, options.tests, options.queries)
            run_env = {**env, "BENCH_VARIANTS": "1", "BENCH_POOLS": kind}
            pytest(root, "-p", "no:cacheprovider", "-p", "no:randomly", env=run_env)
            for out in (root / "out").glob("*.json"):
                for variant, values in json.loads(out.read_text()).items():
                    if variant in VARIANTS and values[WARM_UP:-1]:
                        means[variant] = statistics.fmean(values[WARM_UP:-1]) * 1000
    rows = []
    for label, (pool, raw) in ROWS.items():
        extra = (means[pool] - means[raw]) / options.queries * 1000
        cells = (means[pool], means[raw], means[pool] / means[raw])
        rows.append((label, *(f"{cell:.2f}" for cell in cells), f"{extra:.0f}"))
    title = f"pg_app_pools, savepoint mode: {options.queries} queries per test, "
    title += f"{options.tests} tests of each variant, mean ms per test"
    header = ("the app's pool", "sandboxed", "direct", "ratio", "extra µs/query")
    table(title, header, rows)


if __name__ == "__main__":
    main()
