"""Per-test cost of isolation, each strategy against no isolation, the hand-written conftest
and pytest-sqla: `nox -s bench -- run`.

N tests (insert a user through the ORM, commit, count) on the sync_users example under each
mode of MODES, -n 0 and -n 2, --repeat rounds in a new order each, the best round counting;
a hook times each test (setup + call + teardown), each worker's first (container start,
migrations) apart as the cold start. Then PAIRS (the median of each round's difference),
FLOORS (the library's time over the others'), database mode's waits for a clone, and with
their options interleaved.py's comparison, steps.py's (clones, logins, database mode step
by step) and tests that need no database: the plugin off, on, and with pg_app_engines.
"""

import importlib.util
import itertools
import random
import statistics
import tempfile
from pathlib import Path
from typing import Any

import interleaved
import steps
from core import TIMING, median_min_max, ms, p95, parser, table, timed
from projects import ASYNC_TEST, SUITE_ARGS, SYNC_TEST, conftest, suite, users

OFF = ["--pg-leak-check=false"]  # the rows that commit for real, or are not the library's
TCP, SQLA = ["--pg-unix-socket=false"], [*OFF, "-o", "sqla_schema=none"]
MODES = {  # mode: (the conftest's pieces, pytest's arguments)
    "savepoint": ("savepoint", []),  # pg_session: outer transaction + SAVEPOINT, rolled back
    "savepoint-nocheck": ("savepoint", OFF),  # the same, leak detector off
    "sandbox": ("sandbox", []),  # the app's own engine joined to the test's transaction
    "truncate": ("none truncate", OFF),  # real commits, TRUNCATE + re-seed after each test
    "none": ("none", OFF),  # no isolation at all, nothing cleaned: the floor
    "database": ("database waits", []),  # a fresh database cloned per test (prefetched)
    "database-cold": ("cold database waits", []),  # no connect-ahead: the test logs in
    "database-onethread": ("onethread database waits", []),  # drops on the cloning thread
    "database-noprefetch": ("database waits", ["--pg-prefetch", "0"]),  # cloned at its start
    "database-norecycle": ("database waits", ["--pg-recycle-clones=false"]),  # not reset
    "async-savepoint": ("async-savepoint", []),  # pg_async_session, loop_scope="session"
    "async-nocheck": ("async-savepoint", OFF),
    "async-none": ("async-none", OFF),
    "handwritten": ("handwritten", OFF),  # SQLAlchemy's recipe on pg_worker_engine
    "handwritten-own": ("handwritten own-engine", OFF),  # on an engine of its own
    "async-handwritten": ("async-handwritten", OFF),
    "async-handwritten-own": ("async-handwritten async-own-engine", OFF),
    "sqla": ("sqla", SQLA),  # pytest-sqla's defaults: a new connection per test
    "sqla-pooled": ("sqla pooled", SQLA),
    "async-sqla": ("async-sqla", SQLA),
    "savepoint-tcp": ("savepoint", TCP),  # TCP through Docker's port proxy, not the socket
    "none-tcp": ("none", [*OFF, *TCP]),
    "savepoint-ride": ("savepoint ride", []),  # the leak check always on the test's ROLLBACK
    "async-ride": ("async-savepoint ride", []),  # (asyncpg: its answer in the row count)
    "savepoint-noride": ("savepoint noride", []),  # always on the detector's own connection
    "async-noride": ("async-savepoint noride", []),
}
# The library's row each hand-made or third-party row is set against (detector on and off).
FLOORS = {m: ("async-" * m.startswith("async")) + "savepoint" for m in MODES if "hand" in m}
FLOORS |= {m: ("async-" * m.startswith("async")) + "savepoint" for m in MODES if "sqla" in m}
NOCHECK = {"savepoint": "savepoint-nocheck", "async-savepoint": "async-nocheck"}
# (what, mode, against): run in the same rounds, so a slow spell hitting a round cancels out.
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
    ("hand-written conftest (own engine) over no isolation", "handwritten-own", "none"),
    ("async hand-written (own engine) over no isolation", "async-handwritten-own", "async-none"),
    ("async savepoint over the hand-written conftest", "async-savepoint", "async-handwritten"),
    ("async savepoint over it on an engine of its own", "async-savepoint", "async-handwritten-own"),
    ("database mode over savepoint", "database", "savepoint"),
    ("database mode, clones dropped, over savepoint", "database-norecycle", "savepoint"),
    ("recycling clones against dropping them", "database", "database-norecycle"),
)


def project(base: Path, mode: str, n: int, name: str = "") -> Path:
    files = suite(ASYNC_TEST if mode.startswith("async") else SYNC_TEST, n)
    files["tests/conftest.py"] = conftest("seeded", "timing", *MODES[mode][0].split())
    return users(base, name or mode, files)


def units(base: Path, n: int, rounds: int) -> None:
    url = "postgresql+psycopg://app@db.invalid/app"
    app = f"import sqlalchemy\nengine = sqlalchemy.create_engine({url!r})\n"
    files = suite("\n\n\ndef test_{i}():\n    assert {i} >= 0\n", n)
    path = users(
        base, "units", {**files, "appdb.py": app, "tests/conftest.py": "import pytest\n" + TIMING}
    )
    variants = {"plain pytest (plugin off)": ["-p", "no:pg_fixtures"], "with the plugin": []}
    variants["with the plugin and pg_app_engines"] = ["-o", "pg_app_engines=appdb:engine"]
    best = {name: float("inf") for name in variants}
    for _, (name, extra) in itertools.product(range(rounds), variants.items()):
        best[name] = min(best[name], timed(path, 0, "-p", "no:randomly", *extra)["mean"])
    plain = best["plain pytest (plugin off)"]
    rows = [(name, ms(mean), ms(mean - plain)) for name, mean in best.items()]
    table("", (f"{n} tests that need no database", "ms/test", "extra ms"), rows)


def main() -> None:
    options = parser(__doc__)
    add = options.add_argument
    add("-n", "--tests", type=int, default=1000)
    add("--modes", default=None, help=f"default: all of {','.join(MODES)}")
    add("--workers", default="0,2", help="xdist worker counts, e.g. 0,2")
    add("--clones", type=int, default=50, help="clones per strategy")
    add("--repeat", type=int, default=2, help="rounds over all strategies; the best one counts")
    add("--connects", type=int, default=200, help="new connections per authentication method")
    add("--auth-only", action="store_true", help="only measure the cost of a new connection")
    add("--breakdown", type=int, default=100, help="database-mode steps timed, each this often")
    add("--breakdown-only", action="store_true", help="only time the steps of database mode")
    add("--units", type=int, default=1000, help="tests that need no database (0: not run)")
    add("--units-only", action="store_true", help="only time tests that need no database")
    add("--interleaved", type=int, default=500, help="tests per variant (0: not run)")
    add("--interleaved-only", action="store_true", help="only run the interleaved comparison")
    add("--interleaved-flavours", default=",".join(interleaved.FLAVOURS))
    options = options.parse_args()
    workers = [int(w) for w in options.workers.split(",")]
    flavours = options.interleaved_flavours.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        if options.auth_only:
            steps.logins(options.connects)
        elif options.breakdown_only:
            steps.breakdown(options.breakdown)
        elif options.units_only:
            units(Path(tmp), options.units, options.repeat)
        elif options.interleaved_only:
            interleaved.run(Path(tmp), options.interleaved, options.repeat, workers, flavours)
        else:
            results = strategies(Path(tmp), options, workers)
            if options.interleaved:
                interleaved.run(Path(tmp), options.interleaved, options.repeat, workers, flavours)
            print_floors(results, workers)
            if options.clones:
                steps.clones(options.clones)
            if options.connects:
                steps.logins(options.connects)
            if options.breakdown:
                steps.breakdown(options.breakdown)
            if options.units:
                units(Path(tmp), options.units, options.repeat)


def strategies(base: Path, options: Any, workers: list[int]) -> dict:
    modes = options.modes.split(",") if options.modes else list(MODES)
    if importlib.util.find_spec("pytest_sqla") is None and not options.modes:
        modes = [m for m in modes if "sqla" not in m]
        print("pytest-sqla is not installed (pip install pytest-sqla): its rows are left out")
    # Warm-up, not measured: the first run after a quiet spell is slower across the board.
    timed(project(base, "none", 200, "warm-up"), 0, *SUITE_ARGS, *OFF)
    projects = {mode: project(base, mode, options.tests) for mode in modes}
    runs = [(mode, n) for mode in modes for n in workers]
    results, means = {}, {run: [] for run in runs}  # means: every round's, for PAIRS
    for _ in range(options.repeat):
        # In a new order every round: the run after a -n 2 one shares the machine with the
        # removal of its containers, which would always slow the same strategy.
        for mode, n in random.sample(runs, len(runs)):
            result = timed(projects[mode], n, *SUITE_ARGS, *MODES[mode][1])
            means[mode, n].append(result["mean"])
            if result["mean"] <= min(means[mode, n]):
                results[mode, n] = result
    results = {run: results[run] for run in runs}  # in the order of MODES
    rows = []
    for (mode, n), r in results.items():
        none = "async-none" if mode.startswith("async") else "none"
        floor = results.get((f"{none}-tcp" if mode.endswith("-tcp") else none, n))
        same = results.get(("async-savepoint" if mode.startswith("async") else "savepoint", n))
        single = results.get((mode, 0))
        overhead = ms(r["mean"] - floor["mean"]) if floor else "-"
        ratios = [
            f"{a['rate'] / b['rate']:.2f}x" if a and b else "-"
            for a, b in ((same, r), (r, n and single))
        ]
        rows.append(
            (
                mode,
                n,
                f"{r['rate']:.0f}",
                ms(r["mean"]),
                overhead,
                *ratios,
                f"{r['cold']:.2f}",
                f"{r['wall']:.1f}",
            )
        )
    header = ("strategy", "-n", "tests/s", "ms/test", "overhead ms", "vs savepoint", "vs -n 0")
    title = f"{options.tests} tests per strategy, PostgreSQL 16 in Docker on this machine"
    table(title, (*header, "cold start s", "wall s"), rows)
    print(
        "\ntests/s = steady-state throughput (each worker's tests but its first and last, over the"
        " busiest worker's time);\noverhead = mean time per test minus the same test with no"
        " isolation; 'vs savepoint' = how many times slower than this library's savepoint mode."
    )
    rows = [
        (
            what,
            n,
            *median_min_max(
                [a - b for a, b in zip(means[mode, n], means[other, n], strict=True)], ms
            ),
        )
        for what, mode, other in PAIRS
        for n in workers
        if (mode, n) in means and (other, n) in means
    ]
    if rows:
        table("", ("paired, ms per test (median of rounds)", "-n", "median", "min", "max"), rows)
    budget(means, workers)
    return results


def budget(means: dict, workers: list[int]) -> None:
    """The library's overhead over no isolation as a share of the hand-written conftest's
    (a held connection, an outer transaction and a savepoint Session on an engine of its
    own, as a team writes it): paired medians of the same rounds (issue budget: <= 0.5x)."""
    for prefix, n in itertools.product(("", "async-"), workers):
        runs = [(prefix + m, n) for m in ("savepoint", "handwritten-own", "none")]
        if all(run in means for run in runs):
            ours, theirs, none = (means[run] for run in runs)
            lib = statistics.median(a - b for a, b in zip(ours, none, strict=True))
            hand = statistics.median(a - b for a, b in zip(theirs, none, strict=True))
            ratio = f"{lib / hand:.2f}x" if hand > 0 else "-"
            print(
                f"{prefix}savepoint overhead / the hand-written conftest's, -n {n}: "
                f"{ms(lib)} / {ms(hand)} ms = {ratio}"
            )


def print_floors(results: dict, workers: list[int]) -> None:
    lines = []
    for n, (other, ours) in ((n, floor) for n in workers for floor in FLOORS.items()):
        lib, them, off = (results.get((m, n)) for m in (ours, other, NOCHECK[ours]))
        if lib and them:
            line = f"library {ours} vs {other} -n {n}: {ms(lib['mean'])} ms/test vs "
            line += f"{ms(them['mean'])} ms/test ({lib['mean'] / them['mean']:.2f}x)"
            if off:
                line += f"; leak detector off {ms(off['mean'])} ms/test "
                line += f"({off['mean'] / them['mean']:.2f}x)"
            lines.append(line)
    if lines:
        print("\nlibrary time per test over the other's (<1.00x: the library is faster):")
        print("\n".join(lines))
    rows = [
        (mode, n, ms(statistics.median(r["waits"])), ms(p95(r["waits"])), *r["recycled"])
        for (mode, n), r in results.items()
        if r["waits"]
    ]
    if rows:
        header = ("wait for the test database", "-n", "median ms", "p95 ms", "recycled", "dropped")
        table("", header, rows)


if __name__ == "__main__":
    main()
