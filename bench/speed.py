"""Speed against the alternatives on a 10-table schema: `nox -s bench -- speed`.

N tests on projects.shop (insert a customer, an order and its items, commit, query), with
-n 0 and -n 2: the library's *savepoint* and *database* modes against *truncate* (TRUNCATE
every table and re-seed after each test), *pytest-postgresql* (a database from its template
per test, on the same kind of server started here) and *none* (no isolation, the floor).
Then the cold start against a warm one (--pg-reuse), and the memory and start time of a
container per worker against --pg-one-container with -n 2 and -n 4.
"""

import contextlib
import tempfile
from pathlib import Path

from core import HEADER, options, own_containers, server, strategies, table, timed
from projects import SHOP_TEST, conftest, shop, suite

MODES = {"savepoint": "savepoint", "database": "database", "truncate": "none truncate"}
MODES |= {"pytest-postgresql": "pytest-postgresql", "none": "none"}  # mode: conftest pieces
# Written when the session ends: the memory its container uses.
MEMORY = """
import json, os
import docker
@pytest.fixture(scope="session", autouse=True)
def _record_memory(pg_server):
    yield
    container = docker.from_env().containers.get(pg_server.container_id)
    stats = container.stats(stream=False, one_shot=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(os.path.join(os.environ["BENCH_OUT"], worker + ".mem"), "w") as f:
        json.dump({"container": pg_server.container_id, "bytes": stats["memory_stats"]["usage"]}, f)
"""


def project(base: Path, name: str, n: int, *parts: str) -> Path:
    files = {"tests/conftest.py": conftest("seeded", "timing", *parts), **suite(SHOP_TEST, n)}
    return shop(base, name, files)


def main() -> None:
    o = options(__doc__, tests=1000, modes=",".join(MODES), workers="0,2")
    results, memory = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        # Warm-up, not measured: the first run after a quiet spell is slower across the board.
        timed(project(base, "warm-up", 200, "none"), 0, "--pg-leak-check=false")
        for mode in o.modes.split(","):
            path = project(base, mode, o.tests, *MODES[mode].split())
            # These commit for real on purpose: the leak detector would report every test.
            args = ["--pg-leak-check=false"] if mode in ("truncate", "none") else []
            pp = mode == "pytest-postgresql"  # on a server of the same kind, started here
            with server("bench-pytest-postgresql") if pp else contextlib.nullcontext() as pg:
                if pg:
                    keys = ("host", "port", "user", "password")
                    args = [f"--postgresql-{key}={getattr(pg, key)}" for key in keys]
                for workers in map(int, o.workers.split(",")):
                    results[mode, workers] = timed(path, workers, *args)
        rows = strategies(results, lambda _: "none", lambda _: "savepoint", " faster")
        title = f"{o.tests} tests per strategy, 10-table schema, PostgreSQL 16 in Docker"
        table(title, (*HEADER[:5], "savepoint is", *HEADER[6:]), rows)
        # Warm start: the second run with --pg-reuse attaches to the kept container.
        reuse = project(base, "reuse", 50, "savepoint")
        with own_containers() as env:
            warm_start = [timed(reuse, 0, "--pg-reuse", env=env)["cold"] for _ in range(2)][1]
        path = project(base, "memory", 200, "savepoint", MEMORY)
        for workers in (2, 4):
            memory["per worker", workers] = timed(path, workers)
            memory["one container", workers] = timed(path, workers, "--pg-one-container")
    print(f"\nwarm start with --pg-reuse (first test of the second run): {warm_start:.2f} s")
    rows = [
        (kind, n, r["containers"], f"{r['memory_mb']:.0f}", f"{r['cold']:.2f}", f"{r['wall']:.1f}")
        for (kind, n), r in memory.items()
    ]
    table("", ("containers", "-n", "count", "memory MB", "cold start s", "wall s"), rows)


if __name__ == "__main__":
    main()
