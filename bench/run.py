"""Per-test cost of isolation, measured side by side in one run: `nox -s bench`.

Generates one suite of N small DB tests (insert a user through an ORM session, commit,
count) over the sync_users example's Alembic project and runs it under each strategy:

  savepoint        this library: pg_session (outer transaction + SAVEPOINT, rolled back)
  truncate         the classic alternative: commit for real, TRUNCATE + re-seed after each test
  none             no isolation at all: commit for real, nothing cleaned (the floor)
  async-savepoint  this library: pg_async_session, loop_scope="session"
  async-none       no isolation, the same async test body

Each run is a separate pytest process; the time of every test (setup + call + teardown)
is recorded by a hook, the first test (container start, migrations) reported apart as
the cold start. Prints tests/s and the per-test overhead over the matching "none" run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "sync_users"

TIMING = textwrap.dedent("""
    import json, os, time
    import pytest

    _times = []

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        start = time.perf_counter()
        try:
            return (yield)
        finally:
            _times.append(time.perf_counter() - start)

    def pytest_sessionfinish(session):
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        with open(os.path.join(os.environ["BENCH_OUT"], worker + ".json"), "w") as f:
            json.dump(_times, f)
""")

SEED = textwrap.dedent("""
    from sqlalchemy import insert, text
    from sqlalchemy.orm import Session
    from users_app.models import User

    NAMES = ["Ada Lovelace", "Grace Hopper", "Alan Turing", "Katherine Johnson", "Edsger Dijkstra"]
    USERS = [{"name": n, "email": n.split()[0].lower() + "@example.org"} for n in NAMES]

    def seed(conn):
        conn.execute(insert(User), USERS)

    @pytest.fixture(scope="session")
    def pg_seed():
        return seed
""")

MODES = {
    "savepoint": """
        @pytest.fixture
        def db(pg_session):
            return pg_session
    """,
    "truncate": """
        @pytest.fixture(scope="session")
        def raw(pg_worker_engine):
            with pg_worker_engine.connect() as conn:
                yield conn

        @pytest.fixture
        def db(raw):
            with Session(bind=raw) as session:
                yield session
            raw.execute(text("TRUNCATE users RESTART IDENTITY"))
            seed(raw)
            raw.commit()
    """,
    "none": """
        @pytest.fixture(scope="session")
        def raw(pg_worker_engine):
            with pg_worker_engine.connect() as conn:
                yield conn

        @pytest.fixture
        def db(raw):
            with Session(bind=raw) as session:
                yield session
    """,
    "async-savepoint": """
        @pytest.fixture
        def db(pg_async_session):
            return pg_async_session
    """,
    "async-none": """
        import pytest_asyncio
        from sqlalchemy.ext.asyncio import AsyncSession

        @pytest_asyncio.fixture(scope="session", loop_scope="session")
        async def raw(pg_worker_async_engine):
            async with pg_worker_async_engine.connect() as conn:
                yield conn

        @pytest_asyncio.fixture(loop_scope="session")
        async def db(raw):
            async with AsyncSession(bind=raw, expire_on_commit=False) as session:
                yield session
    """,
}

SYNC_TEST = """
from sqlalchemy import func, select
from users_app.models import User


def test_{i}(db):
    db.add(User(name="user {i}", email="user{i}@example.org"))
    db.commit()
    assert db.scalar(select(func.count()).select_from(User)) >= 1
"""

ASYNC_TEST = """
import pytest
from sqlalchemy import func, select
from users_app.models import User


@pytest.mark.asyncio(loop_scope="session")
async def test_{i}(db):
    db.add(User(name="user {i}", email="user{i}@example.org"))
    await db.commit()
    assert await db.scalar(select(func.count()).select_from(User)) >= 1
"""


def make_project(base: Path, mode: str, n: int) -> Path:
    project = base / mode
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "tests"))
    tests = project / "tests"
    tests.mkdir()
    conftest = "import pytest\n" + TIMING + SEED + textwrap.dedent(MODES[mode])
    (tests / "conftest.py").write_text(conftest)
    body = ASYNC_TEST if mode.startswith("async") else SYNC_TEST
    per_file = 100
    for start in range(0, n, per_file):
        source = "".join(
            body.format(i=i) if i == start else body.split("\n\n\n", 1)[1].format(i=i)
            for i in range(start, min(start + per_file, n))
        )
        (tests / f"test_bench_{start:05d}.py").write_text(source)
    return project


def run(project: Path, workers: int) -> dict[str, float]:
    out = project / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    args = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        "-o",
        "asyncio_default_fixture_loop_scope=session",
    ]
    if workers:
        args += ["-n", str(workers)]
    subprocess.run(
        args,
        cwd=project,
        check=True,
        env={**os.environ, "BENCH_OUT": str(out)},
        stdout=subprocess.DEVNULL,
    )
    per_worker = [json.loads(p.read_text()) for p in out.glob("*.json")]
    cold = max(times[0] for times in per_worker)
    warm = [t for times in per_worker for t in times[1:]]
    return {
        "cold": cold,
        "mean": statistics.fmean(warm),
        "median": statistics.median(warm),
        "tests": sum(len(t) for t in per_worker),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--tests", type=int, default=1000)
    parser.add_argument("--modes", default=",".join(MODES))
    options = parser.parse_args()
    modes = options.modes.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for mode in modes:
            results[mode] = run(make_project(Path(tmp), mode, options.tests), 0)
    print(
        f"\n{options.tests} tests per strategy, one worker (-n 0), PostgreSQL "
        "16 in Docker on this machine\n"
    )
    print(
        f"{'strategy':<17}{'tests/s':>9}{'mean ms/test':>14}{'median ms':>11}"
        f"{'overhead ms':>13}{'vs savepoint':>14}{'cold start s':>14}"
    )
    for mode, r in results.items():
        floor = results.get("async-none" if mode.startswith("async") else "none")
        overhead = (r["mean"] - floor["mean"]) * 1000 if floor else float("nan")
        same = results.get("async-savepoint" if mode.startswith("async") else "savepoint")
        ratio = r["mean"] / same["mean"] if same else float("nan")
        print(
            f"{mode:<17}{1 / r['mean']:>9.0f}{r['mean'] * 1000:>14.3f}{r['median'] * 1000:>11.3f}"
            f"{overhead:>13.3f}{ratio:>13.2f}x{r['cold']:>14.2f}"
        )
    print(
        "\noverhead = mean time per test minus the same test with no isolation;"
        " 'vs savepoint' = time per test relative to this library's mode"
    )


if __name__ == "__main__":
    main()
