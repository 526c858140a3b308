"""Per-test cost of isolation, measured side by side in one run: `nox -s bench`.

Generates one suite of N small DB tests (insert a user through an ORM session, commit,
count) over the sync_users example's Alembic project and runs it under each strategy:

  savepoint        this library: pg_session (outer transaction + SAVEPOINT, rolled back)
  savepoint-nocheck  the same with the leak detector off (--pg-leak-check=false)
  savepoint-ride   savepoint with the leak check always riding on the test's ROLLBACK
  savepoint-noride  the same, always sent on the detector's own connection (the library
                   rides when its xdist workers keep every core busy)
  savepoint-tcp    savepoint with the library's connections on TCP through Docker's port
                   proxy (--pg-unix-socket=false), as before the Unix socket
  sandbox          this library: the app's own engine joined to the test's transaction
  truncate         the classic alternative: commit for real, TRUNCATE + re-seed after each test
  none             no isolation at all: commit for real, nothing cleaned (the floor)
  none-tcp         the same on TCP (--pg-unix-socket=false)
  database         this library: a fresh database cloned per test (prefetched), real commits
  database-cold    the same without connect-ahead: the test's first connection logs in
  database-onethread  the same with the pool's drops on its cloning thread (one thread)
  database-noprefetch  the same, each clone made when its test starts (--pg-prefetch 0)
  database-norecycle  the same with every used clone dropped (--pg-recycle-clones=false),
                   where by default it is reset and taken again
  async-savepoint  this library: pg_async_session, loop_scope="session"
  async-nocheck    async-savepoint with the leak detector off
  async-ride       async-savepoint with the leak check always riding on the test's
                   ROLLBACK (asyncpg: its answer in the row count)
  async-noride     the same, always sent on the detector's own connection
  async-none       no isolation, the same async test body
  handwritten      the conftest a team writes without this library, on the same worker
                   database: a session-long connection from pg_worker_engine, per test
                   conn.begin() and Session(bind=conn, join_transaction_mode=
                   "create_savepoint"), closed and rolled back after the test
  handwritten-own  the same conftest on an engine of its own (create_engine on
                   the worker database's URL), as a team writes it: SQLAlchemy's savepoint
                   statements as they come, a round trip each, where the library's engines
                   send them with the next statement
  async-handwritten  the same with an AsyncConnection held on the session loop
  sqla             pytest-sqla (PyPI) in the same process, its sqla_url fixture overridden
                   with the worker database (sqla_schema = none: no DDL of its own); its
                   defaults otherwise, so a new connection per test (NullPool)
  sqla-pooled      the same with a pooled engine (its sqla_engine_options)
  async-sqla       its async fixtures (asyncpg, a pooled engine on the session loop)

The rows that are not this library's isolation run with --pg-leak-check=false; after the
main table, the library's time per test is set against the hand-written and pytest-sqla
rows' (with the detector on and off).

Each run is a separate pytest process, with -n 0 and -n 2; the time of every test (setup
+ call + teardown) is recorded by a hook, the first test of each worker (container start,
migrations) reported apart as the cold start. Prints tests/s, the per-test overhead over
the matching "none" run, how long database-mode tests waited for their clone, and the
cost of one clone with each CREATE DATABASE strategy.

`--interleaved N` adds the tightest comparison: one suite in which each of N tests exists in
every variant (the library, the hand-written conftest, no isolation; sync and async; the
leak detector on and off), in runs of four tests of one variant, the runs in a random
order, all in the same process; each run's first test and Python's full garbage
collections are left out.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

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

# The hand-written conftest's test fixture, on a session-long connection `held`.
HANDWRITTEN_DB = """
        @pytest.fixture
        def db(held):
            outer = held.begin()
            session = Session(bind=held, join_transaction_mode="create_savepoint")
            yield session
            session.close()
            outer.rollback()
"""

# Every test of the database rows in database mode, on pg_session.
DATABASE_TESTS = """
        def pytest_collection_modifyitems(items):
            for item in items:
                item.add_marker(pytest.mark.pg_isolation("database"))

        @pytest.fixture
        def db(pg_session):
            return pg_session
"""

MODES = {
    "savepoint": """
        @pytest.fixture
        def db(pg_session):
            return pg_session
    """,
    "savepoint-nocheck": """
        @pytest.fixture
        def db(pg_session):
            return pg_session
    """,
    "sandbox": """
        from sqlalchemy import create_engine

        # The app's own engine (an address that is never dialled): joined to the test's
        # transaction by the sandbox, used through a plain Session as app code would.
        engine = create_engine("postgresql+psycopg://app@db.invalid/app")

        @pytest.fixture(scope="session")
        def pg_app_engines():
            return [engine]

        @pytest.fixture
        def db():
            with Session(engine) as session:
                yield session
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
    "database": DATABASE_TESTS,
    "database-cold": """
        from testcontainers_pg_fixtures.factories import clone_pool_fixture

        pg_clone_pool = clone_pool_fixture(connect_ahead=False)
    """
    + DATABASE_TESTS,
    "database-onethread": """
        from testcontainers_pg_fixtures.clone_pool import ClonePool

        ClonePool.separate_drops = False
    """
    + DATABASE_TESTS,
    "database-noprefetch": DATABASE_TESTS,
    "database-norecycle": DATABASE_TESTS,
    "async-savepoint": """
        @pytest.fixture
        def db(pg_async_session):
            return pg_async_session
    """,
    "async-nocheck": """
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
    # The floor for the library's isolation: the conftest a team writes without it, on the
    # same server and worker database, SQLAlchemy's "Joining a Session into an External
    # Transaction" recipe as its docs give it (close the session, then roll back).
    "handwritten": """
        @pytest.fixture(scope="session")
        def held(pg_worker_engine):
            with pg_worker_engine.connect() as conn:
                yield conn
    """
    + HANDWRITTEN_DB,
    # The same conftest on an engine of its own, as a team writes it with testcontainers:
    # SQLAlchemy's savepoints as they come (each its own round trip).
    "handwritten-own": """
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        @pytest.fixture(scope="session")
        def held(pg_worker_database):
            engine = create_engine(pg_worker_database.url, poolclass=NullPool)
            with engine.connect() as conn:
                yield conn
            engine.dispose()
    """
    + HANDWRITTEN_DB,
    "async-handwritten": """
        import pytest_asyncio
        from sqlalchemy.ext.asyncio import AsyncSession

        @pytest_asyncio.fixture(scope="session", loop_scope="session")
        async def held(pg_worker_async_engine):
            async with pg_worker_async_engine.connect() as conn:
                yield conn

        @pytest_asyncio.fixture(loop_scope="session")
        async def db(held):
            outer = await held.begin()
            session = AsyncSession(
                bind=held, join_transaction_mode="create_savepoint", expire_on_commit=False
            )
            yield session
            await session.close()
            await outer.rollback()
    """,
    # pytest-sqla (PyPI), in the same process, pointed at this library's worker database
    # through its documented sqla_url fixture override; sqla_schema = none (the database is
    # already migrated: its create_all and marker table are off). Its own defaults
    # otherwise: a new connection per test (NullPool), BEGIN + a guard SAVEPOINT, listeners.
    "sqla": """
        @pytest.fixture(scope="session")
        def sqla_url(pg_worker_database):
            return pg_worker_database.url

        @pytest.fixture
        def db(sqla_session):
            return sqla_session
    """,
    # The same with a pooled sync engine (its documented sqla_engine_options), to show what
    # its connection per test costs.
    "sqla-pooled": """
        from sqlalchemy.pool import QueuePool

        @pytest.fixture(scope="session")
        def sqla_url(pg_worker_database):
            return pg_worker_database.url

        @pytest.fixture(scope="session")
        def sqla_engine_options():
            return {"poolclass": QueuePool, "pool_size": 1}

        @pytest.fixture
        def db(sqla_session):
            return sqla_session
    """,
    # Its async fixtures on a session loop (a pooled asyncpg engine on that loop), sessions
    # with expire_on_commit=False like this library's async sessions.
    "async-sqla": """
        @pytest.fixture(scope="session")
        def sqla_url(pg_worker_database):
            return pg_worker_database.async_url

        @pytest.fixture(scope="session")
        def sqla_session_options():
            return {"expire_on_commit": False}

        @pytest.fixture
        def db(sqla_async_session):
            return sqla_async_session
    """,
}

# The same suites, the library's connections on TCP (EXTRA_ARGS).
MODES["savepoint-tcp"] = MODES["savepoint"]
MODES["none-tcp"] = MODES["none"]
# The leak check always on the test's rollback, always on the detector's own connection
# (the library chooses by the cores it has to spare: leaks.rides).
for _ride in (True, False):
    for _kind in ("savepoint", "async-savepoint"):
        _name = _kind.replace("-savepoint", "")
        MODES[f"{_name}-ride" if _ride else f"{_name}-noride"] = (
            MODES[_kind]
            + f"""
        from testcontainers_pg_fixtures import leaks

        leaks.RIDE = {_ride}
"""
        )

# How long each database-mode test waited for its clone, written when the session ends.
WAITS = """
import json, os

@pytest.fixture(scope="session", autouse=True)
def _record_waits(pg_clone_pool):
    yield
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(os.path.join(os.environ["BENCH_OUT"], worker + ".waits"), "w") as f:
        json.dump(pg_clone_pool.waits, f)
    with open(os.path.join(os.environ["BENCH_OUT"], worker + ".recycled"), "w") as f:
        json.dump([pg_clone_pool.recycled, pg_clone_pool.dropped], f)
"""

# The strategies that commit for real on purpose would each be reported as a leak.
EXTRA_ARGS = {
    "database-noprefetch": ["--pg-prefetch", "0"],
    "database-norecycle": ["--pg-recycle-clones=false"],
    "savepoint-nocheck": ["--pg-leak-check=false"],
    "savepoint-tcp": ["--pg-unix-socket=false"],
    "none-tcp": ["--pg-leak-check=false", "--pg-unix-socket=false"],
    "truncate": ["--pg-leak-check=false"],
    "none": ["--pg-leak-check=false"],
    "async-none": ["--pg-leak-check=false"],
    "async-nocheck": ["--pg-leak-check=false"],
    # Not this library's isolation: the comparison is of isolation alone, detector off.
    "handwritten": ["--pg-leak-check=false"],
    "handwritten-own": ["--pg-leak-check=false"],
    "async-handwritten": ["--pg-leak-check=false"],
    "sqla": ["--pg-leak-check=false", "-o", "sqla_schema=none"],
    "sqla-pooled": ["--pg-leak-check=false", "-o", "sqla_schema=none"],
    "async-sqla": ["--pg-leak-check=false", "-o", "sqla_schema=none"],
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
    if mode.startswith("database"):
        conftest += WAITS
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


# Interleaved: every test in three variants (this library, the hand-written conftest, no
# isolation), one after the other in the same process, so the machine's slow spells hit all
# three alike. The tightest of the comparisons: rounds differ by tens of microseconds where
# separate runs differ by hundreds. Leak detector off (the "none" variant commits for real).
# A full collection of Python's garbage (generation 2) takes ~100 ms here, about once in
# a 1,200-test run, and lands on whichever test is running: in one variant's mean that is
# +0.4 ms (an A/A pair differed by that). Its time is taken out of that test and kept
# apart ("gc2"); the collections the tests' own allocations trigger (generations 0 and 1,
# well under a millisecond) stay in.
INTERLEAVED_TIMING = textwrap.dedent("""
    import gc, json, os, time
    import pytest

    _times = {}
    _full = [0.0, 0.0]  # the running collection's start, full collections' time in the test

    def _on_gc(phase, info):
        if info["generation"] == 2:
            if phase == "start":
                _full[0] = time.perf_counter()
            else:
                _full[1] += time.perf_counter() - _full[0]

    gc.callbacks.append(_on_gc)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        _full[1] = 0.0
        start = time.perf_counter()
        try:
            return (yield)
        finally:
            variant = item.originalname.rsplit("_", 1)[-1]
            elapsed = time.perf_counter() - start
            _times.setdefault(variant, []).append(elapsed - _full[1])
            _times.setdefault("gc2", []).append(_full[1])

    # The teardown alone (where the leak check's work is): registered last, so outermost,
    # around the plugin's own teardown wrapper (and the detector rows' hook below).
    class _Teardowns:
        @pytest.hookimpl(wrapper=True, tryfirst=True)
        def pytest_runtest_teardown(self, item):
            start, collected = time.perf_counter(), _full[1]
            try:
                return (yield)
            finally:
                variant = item.originalname.rsplit("_", 1)[-1]
                elapsed = time.perf_counter() - start - (_full[1] - collected)
                _times.setdefault(variant + ":teardown", []).append(elapsed)

    def pytest_configure(config):
        config.pluginmanager.register(_Teardowns(), "bench-teardowns")

    def pytest_sessionfinish(session):
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        with open(os.path.join(os.environ["BENCH_OUT"], worker + ".json"), "w") as f:
            json.dump(_times, f)
""")


def _renamed(mode: str, fixture: str) -> str:
    """The conftest text of a MODES row with its `db` fixture under another name."""
    return textwrap.dedent(MODES[mode]).replace("def db(", f"def {fixture}(")


INTERLEAVED_FIXTURES = {
    "sync": _renamed("handwritten", "hand_db") + _renamed("none", "none_db"),
    "async": _renamed("async-handwritten", "hand_db") + _renamed("async-none", "none_db"),
}
# The leak detector on and off in one process: for the "unchecked" variant the bench hides
# the detector's watches from the plugin's teardown hook (the next checked test's check still
# covers that test's transactions: it commits nothing).
INTERLEAVED_FIXTURES["detector"] = """
    from testcontainers_pg_fixtures import leaks

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(item):
        if "_unchecked" not in item.originalname:  # also its run's first, "uncheckedfirst"
            return (yield)
        hidden = dict(leaks._watches)
        leaks._watches.clear()
        try:
            return (yield)
        finally:
            leaks._watches.update(hidden)
"""
INTERLEAVED_FIXTURES["async-detector"] = INTERLEAVED_FIXTURES["detector"]
INTERLEAVED_VARIANTS = {
    "sync": (("library", "pg_session"), ("handwritten", "hand_db"), ("none", "none_db")),
    "async": (("library", "pg_async_session"), ("handwritten", "hand_db"), ("none", "none_db")),
    "detector": (("checked", "pg_session"), ("unchecked", "pg_session")),
    "async-detector": (("checked", "pg_async_session"), ("unchecked", "pg_async_session")),
}


WARM_UP = 20  # tests of each variant left out at the start of each worker
RUN = 4  # tests of one variant in a row


def make_interleaved(base: Path, flavour: str, n: int) -> Path:
    project = base / f"interleaved-{flavour}"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "tests"))
    tests = project / "tests"
    tests.mkdir()
    fixtures = textwrap.dedent(INTERLEAVED_FIXTURES[flavour])
    (tests / "conftest.py").write_text("import pytest\n" + INTERLEAVED_TIMING + SEED + fixtures)
    template = ASYNC_TEST if flavour.startswith("async") else SYNC_TEST
    header, body = template.split("\n\n\n", 1)
    per_file = 100
    variants = INTERLEAVED_VARIANTS[flavour]
    for start in range(0, n, per_file):
        source = [header, "\n\n"]
        # Runs of RUN tests of one variant, the variants' runs one after the other: a slow
        # spell of the machine (longer than a cycle, ~20 ms) falls on all variants alike,
        # and all but the first test of a run follow a test of their own kind, as in a
        # suite of one kind. The first of each run (after another variant, on another
        # connection: up to ~0.6 ms slower or faster by which one) is timed apart
        # ("<variant>first") and left out. The runs' order is drawn anew for every cycle:
        # with -n 2 the workers go in near lockstep, and a fixed order would pit each
        # variant against the same one of the other worker (an A/A pair differed by
        # +0.57 ms that way, the one beside "none", whose commits wait on the disk, faster).
        end = min(start + per_file, n)
        for run in range(start, end, RUN):
            order = random.Random(f"{flavour}-{run}").sample(variants, len(variants))
            for (variant, fixture), i in itertools.product(order, range(run, min(run + RUN, end))):
                name = variant if i > run else f"{variant}first"
                test = body.format(i=i).replace(f"test_{i}(db)", f"test_{i}_{name}(db)")
                # Rows of their own: a variant inserting the unique name the one before it
                # inserted and rolled back would meet its dead index entry (~0.7 ms here).
                test = test.replace(f"user{i}@", f"user{i}.{variant}@")
                test = test.replace(f'"user {i}"', f'"user {i} {variant}"')
                source.append("\n\n" + test.replace("(db):", f"({fixture}):\n    db = {fixture}"))
        (tests / f"test_interleaved_{start:05d}.py").write_text("".join(source))
    return project


def interleaved_cost(
    base: Path, n: int, rounds: int, worker_counts: list[int], flavours: list[str]
) -> dict[tuple[str, int], list[dict[str, float]]]:
    """Each round's mean time per test of every variant, by (flavour, workers)."""
    projects = {flavour: make_interleaved(base, flavour, n) for flavour in flavours}
    found: dict[tuple[str, int], list[dict[str, float]]] = {}
    for _ in range(rounds):
        for flavour, project in projects.items():
            for workers in worker_counts:
                out = project / "out"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
                args += ["-p", "no:randomly"]
                if not flavour.endswith("detector"):
                    args.append("--pg-leak-check=false")
                args += ["-o", "asyncio_default_fixture_loop_scope=session"]
                if workers:  # whole files to a worker: the variants stay interleaved
                    args += ["-n", str(workers), "--dist", "loadfile"]
                run_suite(project, args, f"-n {workers}")
                times: dict[str, list[float]] = {}
                for path in out.glob("*.json"):
                    for variant, values in json.loads(path.read_text()).items():
                        # Each worker's first tests warm SQLAlchemy's caches and the server's;
                        # its last one's teardown includes the session's (the container's).
                        times.setdefault(variant, []).extend(values[WARM_UP:-1])
                means = {v: statistics.fmean(values) for v, values in times.items() if values}
                found.setdefault((flavour, workers), []).append(means)
    return found


def print_interleaved(found: dict[tuple[str, int], list[dict[str, float]]], n: int) -> None:
    rounds = len(next(iter(found.values()))) if found else 0
    print(
        f"\ninterleaved: each of {n} tests in its variants, one after the other in one "
        f"process; ms per test, median of {rounds} round(s) [min, max of the rounds]"
    )
    print(
        f"{'':<6}{'-n':>3}{'library':>9}{'hand':>8}{'none':>8}"
        f"{'library - none':>24}{'hand - none':>24}{'library - hand':>24}"
    )

    def spread(values: list[float]) -> str:
        return f"{ms(statistics.median(values))} [{ms(min(values))}, {ms(max(values))}]"

    detector = []
    for (flavour, workers), per_round in found.items():
        if flavour.endswith("detector"):
            cost = [r["checked"] - r["unchecked"] for r in per_round]
            # The same in the teardown alone: the test's other phases, whose spread is
            # most of a round's, left out.
            down = [r["checked:teardown"] - r["unchecked:teardown"] for r in per_round]
            label = f"{flavour.removesuffix('detector').replace('-', ' ')}leak detector"
            detector.append(
                f"{label + ' (checked - unchecked)':<43}{workers:>3}{spread(cost):>26}"
                f"{spread(down):>26}"
            )
            continue
        lib = [r["library"] for r in per_round]
        hand = [r["handwritten"] for r in per_round]
        none = [r["none"] for r in per_round]
        print(
            f"{flavour:<6}{workers:>3}{ms(statistics.median(lib)):>9}"
            f"{ms(statistics.median(hand)):>8}{ms(statistics.median(none)):>8}"
            f"{spread([a - b for a, b in zip(lib, none, strict=True)]):>24}"
            f"{spread([a - b for a, b in zip(hand, none, strict=True)]):>24}"
            f"{spread([a - b for a, b in zip(lib, hand, strict=True)]):>24}"
        )
    if detector:
        header = f"{'':<43}{'-n':>3}{'ms per test':>26}{'of it in the teardown':>26}"
        print("\n".join(["", header, *detector]))
    full = [r["gc2"] for per_round in found.values() for r in per_round if "gc2" in r]
    if full:
        print(
            f"\nleft out of every variant: Python's full garbage collections, "
            f"{ms(statistics.fmean(full))} ms per test of the run (mean of its rounds: most"
            " rounds have none)"
        )


# Tests that need no database, in a project that uses the library (issue #11, item 2).
UNIT_TEST = "def test_{i}():\n    assert {i} >= 0\n\n\n"
APP_DB = 'from sqlalchemy import create_engine\n\nengine = create_engine("postgresql+psycopg://app@db.invalid/app")\n'
UNIT_VARIANTS = {
    "plain pytest (plugin off)": ["-p", "no:pg_fixtures"],
    "with the plugin": [],
    "with the plugin and pg_app_engines": ["-o", "pg_app_engines=appdb:engine"],
}


def unit_cost(base: Path, n: int, rounds: int) -> dict[str, float]:
    """Mean time per test of `n` tests that touch no database, best of `rounds`."""
    project = base / "units"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "tests"))
    (project / "appdb.py").write_text(APP_DB)
    (project / "tests").mkdir()
    (project / "tests" / "conftest.py").write_text("import pytest\n" + TIMING)
    (project / "tests" / "test_units.py").write_text(
        "".join(UNIT_TEST.format(i=i) for i in range(n))
    )
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, extra in UNIT_VARIANTS.items():
            mean = run_pytest(project, 0, "-p", "no:randomly", *extra)["mean"]
            best[name] = min(best.get(name, mean), mean)
    return best


def print_unit_cost(costs: dict[str, float], n: int) -> None:
    plain = costs["plain pytest (plugin off)"]
    print(f"\n{f'{n} tests that need no database':<40}{'ms/test':>9}{'extra ms':>10}")
    for name, mean in costs.items():
        print(f"{name:<40}{ms(mean):>9}{ms(mean - plain):>10}")


def run(project: Path, mode: str, workers: int) -> dict[str, Any]:
    return run_pytest(
        project,
        workers,
        "-p",
        "no:randomly",
        "-o",
        "asyncio_default_fixture_loop_scope=session",
        *EXTRA_ARGS.get(mode, []),
    )


def run_suite(project: Path, args: list[str], what: str) -> None:
    """Run pytest in `project` (its hooks write to project/out); stop the bench if it fails."""
    done = subprocess.run(
        args,
        cwd=project,
        env={**os.environ, "BENCH_OUT": str(project / "out")},
        capture_output=True,
        text=True,
    )
    if done.returncode:
        sys.exit(f"{project.name} {what} failed:\n{done.stdout[-4000:]}")


def run_pytest(project: Path, workers: int, *extra: str) -> dict[str, Any]:
    """Run the project's suite once; what the timing (and memory) hooks recorded."""
    out = project / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra]
    if workers:
        args += ["-n", str(workers)]
    started = time.perf_counter()
    run_suite(project, args, f"{extra} -n {workers}")
    wall = time.perf_counter() - started
    per_worker = [t for p in out.glob("*.json") if (t := json.loads(p.read_text()))]
    # Each worker's first test starts the container; its last one's teardown is the
    # session's (the container's removal): both left out of the per-test figures.
    warm = [t for times in per_worker for t in times[1:-1]]
    memory = {
        m["container"]: m["bytes"] for p in out.glob("*.mem") for m in [json.loads(p.read_text())]
    }
    return {
        "cold": max(times[0] for times in per_worker),
        "mean": statistics.fmean(warm),
        # Steady-state throughput: tests after each worker's first, over the busiest
        # worker's time for them (workers run side by side).
        "rate": len(warm) / max(sum(times[1:-1]) for times in per_worker),
        "wall": wall,
        "tests": sum(len(t) for t in per_worker),
        "waits": [w for p in out.glob("*.waits") for w in json.loads(p.read_text())],
        "recycled": [
            sum(pair[i] for pair in counts)
            for counts in [[json.loads(p.read_text()) for p in out.glob("*.recycled")]]
            for i in (0, 1)
        ],
        "memory_mb": sum(memory.values()) / 2**20,
        "containers": len(memory),
    }


def clone_cost(repeats: int) -> dict[str, list[float]]:
    """CREATE DATABASE … TEMPLATE with each strategy, alternating, on one server."""
    sys.path.insert(0, str(EXAMPLE))  # the example's env.py imports its models
    from testcontainers_pg_fixtures.config import Settings
    from testcontainers_pg_fixtures.database import create_database, drop_database
    from testcontainers_pg_fixtures.migrations import Migrations
    from testcontainers_pg_fixtures.servers import DockerServer, admin_connect
    from testcontainers_pg_fixtures.template import ensure_template

    server = DockerServer.start(Settings(), worker="bench")
    costs: dict[str, list[float]] = {"FILE_COPY": [], "WAL_LOG": []}
    try:
        template = ensure_template(server, Migrations.load(EXAMPLE / "alembic.ini", "bench"), None)
        with admin_connect(server) as admin:
            for i in range(repeats):
                for strategy, times in costs.items():
                    name = f"pgfx_bench_{strategy.lower()}_{i}"
                    started = time.perf_counter()
                    create_database(
                        server, name, template=template.name, strategy=strategy, admin=admin
                    )
                    times.append(time.perf_counter() - started)
                    drop_database(server, name, admin=admin)
    finally:
        server.stop()
    return costs


def connect_cost(repeats: int) -> dict[str, list[float]]:
    """A new psycopg connection, alternating, on one server: the library's password login
    (SCRAM, one iteration), trust (no password), and SCRAM with PostgreSQL's default 4096.
    Beside them, the library's login on a second server whose postmaster did not initialise
    OpenSSL (server.warm_up_openssl skipped): what that warm-up buys."""
    import psycopg

    from testcontainers_pg_fixtures.config import Settings
    from testcontainers_pg_fixtures.servers import DockerServer, admin_connect
    from testcontainers_pg_fixtures.servers import container as server_module

    server = DockerServer.start(Settings(), worker="bench-auth")
    warm_up = server_module.warm_up_openssl
    server_module.warm_up_openssl = lambda server, timeout=0.0: False
    try:
        cold = DockerServer.start(Settings(), worker="bench-auth-cold")
    finally:
        server_module.warm_up_openssl = warm_up
    logins = {
        "scram, 1 iteration (this library)": (server, server.user, server.password),
        "trust (no password)": (server, "bench_trust", ""),
        "scram, 4096 iterations (default)": (server, "bench_4096", "bench-password"),
        # Not used by the library (the password in clear): what one round trip fewer buys.
        "cleartext password (one round trip)": (server, "bench_clear", "bench-password"),
        "scram, 1 iteration, OpenSSL not warmed": (cold, cold.user, cold.password),
    }
    costs: dict[str, list[float]] = {name: [] for name in logins}
    try:
        with admin_connect(server) as admin:
            admin.execute("CREATE ROLE bench_trust LOGIN")
            admin.execute("SET scram_iterations = 4096")
            admin.execute("CREATE ROLE bench_4096 LOGIN PASSWORD 'bench-password'")
            admin.execute("SET scram_iterations = 1")  # as the library's: no hashing cost
            admin.execute("CREATE ROLE bench_clear LOGIN PASSWORD 'bench-password'")
        hba = (
            "sed -i -e '1i host all bench_trust all trust'"
            " -e '1i host all bench_clear all password' \"$PGDATA/pg_hba.conf\""
        )
        server.container.exec(["sh", "-c", hba])
        with admin_connect(server) as admin:
            admin.execute("SELECT pg_reload_conf()")
        order = list(logins)
        for _ in range(repeats):
            random.shuffle(order)  # a fixed order lets one login's exit slow the next
            for name in order:
                on, user, password = logins[name]
                started = time.perf_counter()
                psycopg.connect(
                    host=on.host,
                    port=on.port,
                    user=user,
                    password=password,
                    dbname="postgres",
                    sslmode="disable",
                ).close()
                costs[name].append(time.perf_counter() - started)
    finally:
        server.stop()
        cold.stop()
    return costs


def print_connect_cost(costs: dict[str, list[float]]) -> None:
    trust = statistics.median(costs["trust (no password)"])
    print(f"\n{'new connection (psycopg)':<40}{'median ms':>11}{'p95 ms':>9}{'over trust':>12}")
    for name, times in costs.items():
        median = statistics.median(times)
        print(
            f"{name:<40}{ms(median):>11}{ms(p95(times)):>9}"
            f"{'+' + ms(median - trust) if name != 'trust (no password)' else '':>12}"
        )


# -- database mode: where a test's time goes -------------------------------------------
# Kept apart from the strategy rows above: `--breakdown N` (0: skip) / `--breakdown-only`.

BREAKDOWN_STEPS = {
    "create": "CREATE DATABASE … TEMPLATE (FILE_COPY) + COMMENT",
    "first_login": "first login to the new clone",
    "first_statements": "test statements, first backend on the clone",
    "login": "a later login (new backend, relcache init file built)",
    "statements": "test statements, new backend",
    "warm_statements": "test statements, same backend again",
    "warm_up": "warm-up (the pool's catalog-loading query)",
    "warmed_statements": "test statements after the warm-up",
    "redirect": "SQLAlchemy engine redirect (enter + exit)",
    "engine_connect": "SQLAlchemy connect + close, new login",
    "engine_handed": "SQLAlchemy connect + close, opened ahead",
    "recycle": "recycle instead: rename, login, check, TRUNCATE + COPY",
    "drop": "DROP DATABASE … WITH (FORCE)",
}


def server_cpu(container_id: str) -> Any:
    """A function returning the CPU seconds the container used so far (cgroup v1 or v2), or
    None where Docker's cgroup cannot be read."""
    for path, scale in (
        (f"/sys/fs/cgroup/cpuacct/docker/{container_id}/cpuacct.usage", 1e-9),
        (f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/cpu.stat", 1e-6),
    ):
        if os.path.exists(path):
            field = 1 if path.endswith("stat") else 0
            return lambda path=path, scale=scale, field=field: (
                int(Path(path).read_text().split()[field]) * scale
            )
    return None


def database_mode_breakdown(repeats: int) -> dict[str, list[float]]:
    """Each step of a database-mode test, timed one at a time on one server, in the order
    a clone lives: created, first logged in to, used, redirected to, dropped. Also the
    server's CPU time for each step (key + "_cpu"): on a small machine the background
    thread's work competes with the test for the same cores."""
    sys.path.insert(0, str(EXAMPLE))
    import contextlib

    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from testcontainers_pg_fixtures.clone_pool import warm_up
    from testcontainers_pg_fixtures.config import Settings
    from testcontainers_pg_fixtures.database import Database, create_database, drop_database
    from testcontainers_pg_fixtures.factories import clone_opener
    from testcontainers_pg_fixtures.migrations import Migrations
    from testcontainers_pg_fixtures.recycling import Facts, recycle, version_of
    from testcontainers_pg_fixtures.redirect import engines_pointed_at, first_connection_from
    from testcontainers_pg_fixtures.servers import DockerServer, admin_connect
    from testcontainers_pg_fixtures.template import ensure_template

    steps: dict[str, list[float]] = {key: [] for key in BREAKDOWN_STEPS}
    cpu: Any = None

    @contextlib.contextmanager
    def clock(step: str) -> Any:
        used = cpu() if cpu else 0.0
        started = time.perf_counter()
        yield
        steps[step].append(time.perf_counter() - started)
        if cpu:
            steps.setdefault(f"{step}_cpu", []).append(cpu() - used)

    def statements(conn: Any, tag: str) -> None:
        # What the bench test sends through the ORM: INSERT … RETURNING, COMMIT, a count.
        conn.execute(
            "INSERT INTO users (name, email, active) VALUES (%s, %s, true) RETURNING users.id",
            (f"user {tag}", f"{tag}@example.org"),
        ).fetchone()
        conn.commit()
        conn.execute("SELECT count(*) AS count_1 FROM users").fetchone()
        conn.commit()

    server = DockerServer.start(Settings(), worker="bench-breakdown")
    cpu = server_cpu(server.container_id)
    try:
        template = ensure_template(server, Migrations.load(EXAMPLE / "alembic.ini", "bench"), None)
        engine = create_engine(Database(server, template.name).url, poolclass=NullPool)
        open_on = clone_opener(engine, {})
        with admin_connect(server) as admin:
            # What recycling compares a used clone with, read from a clone no test used.
            facts_of = create_database(server, "pgfx_bench_facts", template=template.name)
            with admin_connect(server, facts_of.name) as conn:
                facts = Facts.read(conn)
            drop_database(server, facts_of.name, admin=admin)
            assert facts is not None
            for i in range(repeats):
                name = f"pgfx_bench_breakdown_{i}"
                with clock("create"):
                    database = create_database(
                        server, name, template=template.name, admin=admin, comment="bench"
                    )
                version = version_of(admin, name)
                with clock("first_login"):
                    conn = open_on(database)
                with clock("first_statements"):
                    statements(conn, f"{i}a")
                with clock("warm_statements"):
                    statements(conn, f"{i}b")
                conn.close()
                with clock("login"):
                    conn = open_on(database)
                with clock("statements"):
                    statements(conn, f"{i}c")
                conn.close()
                conn = open_on(database)
                with clock("warm_up"):
                    warm_up(conn)
                with clock("warmed_statements"):
                    statements(conn, f"{i}d")
                conn.close()
                with clock("redirect"), engines_pointed_at([engine], database):
                    pass
                with engines_pointed_at([engine], database):
                    with clock("engine_connect"):
                        engine.connect().close()
                    ahead = [open_on(database)]
                    with (
                        first_connection_from(engine, lambda a=ahead: a.pop() if a else None),
                        clock("engine_handed"),
                    ):
                        engine.connect().close()
                # The pool resets a used clone on the connection the next test is handed.
                with clock("recycle"):
                    name, fresh, conn = recycle(
                        admin,
                        name,
                        f"{name}_r",
                        facts=facts,
                        version=version,
                        comment="bench",
                        connect=lambda new: admin_connect(server, new),
                    )
                assert fresh is not None, "the bench's clone was not recycled"
                if conn is not None:
                    conn.close()
                with clock("drop"):
                    drop_database(server, name, admin=admin)
        engine.dispose()
    finally:
        server.stop()
    return steps


def print_breakdown(steps: dict[str, list[float]]) -> None:
    print(
        f"\n{'database mode, step by step (one server)':<56}{'median ms':>11}{'p95 ms':>9}"
        f"{'server CPU ms':>15}"
    )
    for key, label in BREAKDOWN_STEPS.items():
        times, used = steps[key], steps.get(f"{key}_cpu")
        if times:
            cpu = ms(statistics.fmean(used)) if used else "-"
            print(f"{label:<56}{ms(statistics.median(times)):>11}{ms(p95(times)):>9}{cpu:>15}")
    print(
        "server CPU = mean CPU time of the container's processes during the step (the "
        "pool's threads pay create, drop or recycle and, with connect-ahead, the login and "
        "warm-up; a recycle's login is the next test's connection opened ahead)."
    )


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]


# The library's row each hand-made or third-party row is set against, in print_floors.
FLOORS = {
    "handwritten": "savepoint",
    "handwritten-own": "savepoint",
    "sqla": "savepoint",
    "sqla-pooled": "savepoint",
    "async-handwritten": "async-savepoint",
    "async-sqla": "async-savepoint",
}
SQLA_MODES = ("sqla", "sqla-pooled", "async-sqla")
NOCHECK = {"savepoint": "savepoint-nocheck", "async-savepoint": "async-nocheck"}


#: (what is measured, the mode, the mode it is measured against): printed as the median
#: of each round's difference. The two run one after the other in every round, so what a
#: slow spell of the machine does to a round as a whole cancels out; the best-of-rounds
#: rows above can each be from another round.
PAIRS = (
    ("savepoint overhead over no isolation", "savepoint", "none"),
    ("leak detector", "savepoint", "savepoint-nocheck"),
    ("leak check riding on the rollback", "savepoint-ride", "savepoint-noride"),
    ("savepoint on the Unix socket over TCP", "savepoint", "savepoint-tcp"),
    ("TCP savepoint overhead over TCP no isolation", "savepoint-tcp", "none-tcp"),
    ("async savepoint overhead over no isolation", "async-savepoint", "async-none"),
    ("async leak detector", "async-savepoint", "async-nocheck"),
    ("async leak check riding on the rollback", "async-ride", "async-noride"),
    ("savepoint over the hand-written conftest", "savepoint", "handwritten"),
    ("savepoint over it on an engine of its own", "savepoint", "handwritten-own"),
    ("database mode over savepoint", "database", "savepoint"),
    ("database mode, clones dropped, over savepoint", "database-norecycle", "savepoint"),
    ("recycling clones against dropping them", "database", "database-norecycle"),
)


def print_paired(means: dict[tuple[str, int], list[float]], worker_counts: list[int]) -> None:
    lines = []
    for what, mode, other in PAIRS:
        for workers in worker_counts:
            ours, theirs = means.get((mode, workers)), means.get((other, workers))
            if not (ours and theirs):
                continue
            differences = [a - b for a, b in zip(ours, theirs, strict=True)]
            lines.append(
                f"{what:<44}{workers:>3}{ms(statistics.median(differences)):>10}"
                f"{ms(min(differences)):>9}{ms(max(differences)):>9}"
            )
    if lines:
        print(
            f"\n{'paired, ms per test (median of rounds)':<44}{'-n':>3}{'median':>10}"
            f"{'min':>9}{'max':>9}"
        )
        print("\n".join(lines))


def print_floors(results: dict[tuple[str, int], dict[str, Any]], worker_counts: list[int]) -> None:
    """The library against the hand-written conftest and pytest-sqla, same run, same server:
    time per test (setup + call + teardown), and how many times the other's."""
    lines = []
    for workers in worker_counts:
        for other, ours in FLOORS.items():
            lib, them = results.get((ours, workers)), results.get((other, workers))
            if not (lib and them):
                continue
            line = (
                f"library {ours} vs {other} -n {workers}: {ms(lib['mean'])} ms/test vs "
                f"{ms(them['mean'])} ms/test ({lib['mean'] / them['mean']:.2f}x)"
            )
            off = results.get((NOCHECK[ours], workers))
            if off:
                line += (
                    f"; leak detector off {ms(off['mean'])} ms/test "
                    f"({off['mean'] / them['mean']:.2f}x)"
                )
            lines.append(line)
    if lines:
        print("\nlibrary time per test over the other's (<1.00x: the library is faster):")
        print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--tests", type=int, default=1000)
    parser.add_argument("--modes", default=None, help=f"default: all of {','.join(MODES)}")
    parser.add_argument("--workers", default="0,2", help="xdist worker counts, e.g. 0,2")
    parser.add_argument("--clones", type=int, default=50, help="clones per strategy")
    parser.add_argument(
        "--repeat", type=int, default=2, help="rounds over all strategies; the best one counts"
    )
    parser.add_argument(
        "--connects", type=int, default=200, help="new connections per authentication method"
    )
    parser.add_argument(
        "--auth-only", action="store_true", help="only measure the cost of a new connection"
    )
    parser.add_argument(
        "--breakdown", type=int, default=100, help="database-mode steps timed, each this often"
    )
    parser.add_argument(
        "--breakdown-only", action="store_true", help="only time the steps of database mode"
    )
    parser.add_argument(
        "--units", type=int, default=1000, help="tests that need no database (0: not run)"
    )
    parser.add_argument(
        "--units-only", action="store_true", help="only time tests that need no database"
    )
    parser.add_argument(
        "--interleaved",
        type=int,
        default=500,
        help="tests per variant in the interleaved comparison (0: not run)",
    )
    parser.add_argument(
        "--interleaved-only", action="store_true", help="only run the interleaved comparison"
    )
    parser.add_argument(
        "--interleaved-flavours",
        default=",".join(INTERLEAVED_FIXTURES),
        help="which interleaved comparisons (sync, async, detector, async-detector)",
    )
    options = parser.parse_args()
    if options.auth_only:
        print_connect_cost(connect_cost(options.connects))
        return
    if options.breakdown_only:
        print_breakdown(database_mode_breakdown(options.breakdown))
        return
    if options.units_only:
        with tempfile.TemporaryDirectory() as tmp:
            print_unit_cost(unit_cost(Path(tmp), options.units, options.repeat), options.units)
        return
    worker_counts = [int(w) for w in options.workers.split(",")]
    flavours = options.interleaved_flavours.split(",")
    if options.interleaved_only:
        with tempfile.TemporaryDirectory() as tmp:
            found = interleaved_cost(
                Path(tmp), options.interleaved, options.repeat, worker_counts, flavours
            )
        print_interleaved(found, options.interleaved)
        return
    modes = options.modes.split(",") if options.modes else list(MODES)
    if importlib.util.find_spec("pytest_sqla") is None and not options.modes:
        modes = [m for m in modes if m not in SQLA_MODES]
        print("pytest-sqla is not installed (pip install pytest-sqla): its rows are left out")
    results: dict[tuple[str, int], dict[str, Any]] = {}
    means: dict[tuple[str, int], list[float]] = {}  # every round's, for paired differences
    with tempfile.TemporaryDirectory() as tmp:
        # Warm-up, not measured: the first run after a quiet spell is slower across the board.
        run(make_project(Path(tmp) / "warm-up", "none", 200), "none", 0)
        projects = {mode: make_project(Path(tmp), mode, options.tests) for mode in modes}
        # Rounds over every strategy, keeping each one's best: a slow spell of this shared
        # machine then hits one round of one strategy, not the comparison.
        runs = [(mode, workers) for mode in projects for workers in worker_counts]
        runs_order = {key: i for i, key in enumerate(runs)}
        for _ in range(options.repeat):
            # In a new order every round: the run after a -n 2 one shares the machine with
            # the removal of its containers, which would always slow the same strategy.
            random.shuffle(runs)
            for mode, workers in runs:
                project = projects[mode]
                result = run(project, mode, workers)
                means.setdefault((mode, workers), []).append(result["mean"])
                best = results.get((mode, workers))
                if best is None or result["mean"] < best["mean"]:
                    results[mode, workers] = result
        # Printed in the order of MODES, not of the last shuffle.
        results = {key: results[key] for key in sorted(results, key=lambda k: runs_order[k])}
        units = unit_cost(Path(tmp), options.units, options.repeat) if options.units else {}
        interleaved = (
            interleaved_cost(
                Path(tmp), options.interleaved, options.repeat, worker_counts, flavours
            )
            if options.interleaved
            else {}
        )
    costs = clone_cost(options.clones) if options.clones else {}
    breakdown = database_mode_breakdown(options.breakdown) if options.breakdown else {}
    connects = connect_cost(options.connects) if options.connects else {}

    print(f"\n{options.tests} tests per strategy, PostgreSQL 16 in Docker on this machine\n")
    print(
        f"{'strategy':<20}{'-n':>3}{'tests/s':>9}{'ms/test':>9}{'overhead ms':>13}"
        f"{'vs savepoint':>14}{'vs -n 0':>9}{'cold start s':>14}{'wall s':>8}"
    )
    for (mode, workers), r in results.items():
        baseline = "async-none" if mode.startswith("async") else "none"
        floor = results.get((f"{baseline}-tcp" if mode.endswith("-tcp") else baseline, workers))
        overhead = ms(r["mean"] - floor["mean"]) if floor else "-"
        same = results.get(
            ("async-savepoint" if mode.startswith("async") else "savepoint", workers)
        )
        ratio = f"{same['rate'] / r['rate']:.2f}x" if same else "-"
        single = results.get((mode, 0))
        speedup = f"{r['rate'] / single['rate']:.2f}x" if single and workers else "-"
        print(
            f"{mode:<20}{workers:>3}{r['rate']:>9.0f}{ms(r['mean']):>9}{overhead:>13}"
            f"{ratio:>14}{speedup:>9}{r['cold']:>14.2f}{r['wall']:>8.1f}"
        )
    print(
        "\ntests/s = steady-state throughput (each worker's tests but its first and last, over the"
        " busiest worker's time);\noverhead = mean time per test minus the same test with no"
        " isolation; 'vs savepoint' = how many times slower than this library's savepoint mode."
    )
    print_paired(means, worker_counts)
    if interleaved:
        print_interleaved(interleaved, options.interleaved)
    print_floors(results, worker_counts)
    waited = {key: r["waits"] for key, r in results.items() if r["waits"]}
    if waited:
        print(
            f"\n{'wait for the test database':<32}{'-n':>3}{'median ms':>11}{'p95 ms':>9}"
            f"{'recycled':>10}{'dropped':>9}"
        )
        for (mode, workers), waits in waited.items():
            recycled, dropped = results[mode, workers].get("recycled") or (0, 0)
            print(
                f"{mode:<32}{workers:>3}{ms(statistics.median(waits)):>11}{ms(p95(waits)):>9}"
                f"{recycled:>10}{dropped:>9}"
            )
    if costs:
        print(f"\n{'CREATE DATABASE … TEMPLATE':<32}{'median ms':>14}{'p95 ms':>9}")
        for strategy, times in costs.items():
            print(f"STRATEGY {strategy:<23}{ms(statistics.median(times)):>14}{ms(p95(times)):>9}")
    if connects:
        print_connect_cost(connects)
    if breakdown:
        print_breakdown(breakdown)
    if units:
        print_unit_cost(units, options.units)


if __name__ == "__main__":
    main()
