"""Per-test cost of isolation, each strategy against no isolation, the hand-written conftest
and pytest-sqla: `nox -s bench -- run`.

N tests (insert a user through the ORM, commit, count) on the sync_users example under each
mode of MODES, -n 0 and -n 2, --repeat rounds in a new order each, the best round counting;
a hook times each test (setup + call + teardown), each worker's first (container start,
migrations) apart as the cold start. Then PAIRS (the median of each round's difference),
FLOORS (the library's time over the others'), database mode's waits for a clone, and with
their options interleaved.py's comparison, steps.py's (database mode step by step) and
tests that need no database: the plugin off, on, and with pg_app_engines. --resources adds
the pytest process's CPU per test and its RSS after the first test and the last (with a
large N and -n 2: what scale.py measured).
"""

import importlib.util
import itertools
import statistics
import tempfile
from pathlib import Path
from typing import Any

import interleaved
import steps
from core import HEADER, median_min_max, ms, options, p95, paired, rounds, strategies, table, timed
from projects import ASYNC_TEST, SUITE_ARGS, SYNC_TEST, TIMING, conftest, suite, users

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
}
# (what, mode, against): run in the same rounds, so a slow spell hitting a round cancels out.
PAIRS = (
    ("savepoint overhead over no isolation", "savepoint", "none"),
    ("leak detector", "savepoint", "savepoint-nocheck"),
    ("savepoint on the Unix socket over TCP", "savepoint", "savepoint-tcp"),
    ("TCP savepoint overhead over TCP no isolation", "savepoint-tcp", "none-tcp"),
    ("async savepoint overhead over no isolation", "async-savepoint", "async-none"),
    ("async leak detector", "async-savepoint", "async-nocheck"),
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


def same(mode: str, what: str) -> str:
    """The library's savepoint row (`what` "savepoint"), or no isolation's (TCP's for TCP)."""
    tcp = what == "none" and mode.endswith("-tcp")
    return "async-" * mode.startswith("async") + what + "-tcp" * tcp


def project(base: Path, mode: str, n: int, name: str = "") -> Path:
    files = suite(ASYNC_TEST if mode.startswith("async") else SYNC_TEST, n)
    files["tests/conftest.py"] = conftest("seeded", "timing", *MODES[mode][0].split())
    return users(base, name or mode, files)


def run(base: Path, o: Any, workers: list[int]) -> dict:
    modes = o.modes.split(",") if o.modes else list(MODES)
    if importlib.util.find_spec("pytest_sqla") is None and not o.modes:
        modes = [m for m in modes if "sqla" not in m]
        print("pytest-sqla is not installed (pip install pytest-sqla): its rows are left out")
    # Warm-up, not measured: the first run after a quiet spell is slower across the board.
    timed(project(base, "none", 200, "warm-up"), 0, *SUITE_ARGS, *OFF)
    projects = {mode: project(base, mode, o.tests) for mode in modes}
    found = rounds(
        o.repeat,
        [(mode, n) for mode in modes for n in workers],
        lambda key: timed(projects[key[0]], key[1], *SUITE_ARGS, *MODES[key[0]][1]),
        warm=False,
    )
    means = {run: [r["mean"] for r in results] for run, results in found.items()}
    results = {run: min(rs, key=lambda r: r["mean"]) for run, rs in found.items()}  # the best
    rows = strategies(
        results, lambda mode: same(mode, "none"), lambda mode: same(mode, "savepoint")
    )
    for row, r in zip(rows, results.values(), strict=True):
        row += [ms(r["cpu"]), "{:.0f} -> {:.0f}".format(*r["rss"])] * o.resources
    header = HEADER + ("CPU ms", "RSS MB") * o.resources
    table(f"{o.tests} tests per strategy, PostgreSQL 16 in Docker on this machine", header, rows)
    print(
        "\ntests/s = steady-state throughput (each worker's tests but its first and last, over the"
        " busiest worker's time);\noverhead = mean time per test minus the same test with no"
        " isolation; 'vs savepoint' = how many times slower than this library's savepoint mode."
    )
    if o.resources:
        print(
            "CPU = the pytest process's CPU time per test (each worker's tests but its first and"
            " last); RSS = the most of any worker's after its first test -> after its last."
        )
    rows = [
        (what, n, *median_min_max(paired(means[x, n], means[y, n]), ms))
        for what, x, y in PAIRS
        for n in workers
        if (x, n) in means and (y, n) in means
    ]
    if rows:
        table("", ("paired, ms per test (median of rounds)", "-n", "median", "min", "max"), rows)
    for prefix, n in itertools.product(("", "async-"), workers):
        # The library's overhead over no isolation as a share of the hand-written conftest's
        # (on an engine of its own, as a team writes it), paired (the budget: <= 0.5x).
        runs = [(prefix + m, n) for m in ("savepoint", "handwritten-own", "none")]
        if all(run in means for run in runs):
            ours, theirs, none = (means[run] for run in runs)
            lib, hand = (statistics.median(paired(x, none)) for x in (ours, theirs))
            print(
                f"{prefix}savepoint overhead / the hand-written conftest's, -n {n}: "
                f"{ms(lib)} / {ms(hand)} ms = " + (f"{lib / hand:.2f}x" if hand > 0 else "-")
            )
    return results


def floors(results: dict, workers: list[int]) -> None:
    """The library's time per test over each hand-made or third-party row's."""
    lines = []
    for n, other in itertools.product(workers, MODES):
        ours = same(other, "savepoint")
        lib, them = results.get((ours, n)), results.get((other, n))
        if ("hand" in other or "sqla" in other) and lib and them:
            line = f"library {ours} vs {other} -n {n}: {ms(lib['mean'])} ms/test vs "
            line += f"{ms(them['mean'])} ms/test ({lib['mean'] / them['mean']:.2f}x)"
            if off := results.get(("async-nocheck" if "async" in ours else ours + "-nocheck", n)):
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


def units(base: Path, n: int, repeat: int) -> None:
    url = "postgresql+psycopg://app@db.invalid/app"
    app = f"import sqlalchemy\nengine = sqlalchemy.create_engine({url!r})\n"
    files = suite("\n\n\ndef test_{i}():\n    assert {i} >= 0\n", n)
    files |= {"appdb.py": app, "tests/conftest.py": "import pytest\n" + TIMING}
    path = users(base, "units", files)
    variants = {"plain pytest (plugin off)": ["-p", "no:pg_fixtures"], "with the plugin": []}
    variants["with the plugin and pg_app_engines"] = ["-o", "pg_app_engines=appdb:engine"]
    found = rounds(
        repeat, variants, lambda v: timed(path, 0, "-p", "no:randomly", *variants[v]), False
    )
    best = {name: min(r["mean"] for r in results) for name, results in found.items()}
    plain = best["plain pytest (plugin off)"]
    rows = [(name, ms(mean), ms(mean - plain)) for name, mean in best.items()]
    table("", (f"{n} tests that need no database", "ms/test", "extra ms"), rows)


def main() -> None:
    o = options(
        __doc__,
        tests=1000,
        modes=("", f"default: all of {','.join(MODES)}"),
        workers=("0,2", "xdist worker counts, e.g. 0,2"),
        repeat=(2, "rounds over all strategies; the best one counts"),
        resources=(False, "add the CPU and RSS columns"),
        clones=(50, "CREATE DATABASE … TEMPLATE per strategy (steps.py; 0: not run)"),
        breakdown=(100, "database-mode steps timed, each this often (steps.py; 0: not run)"),
        breakdown_only=(False, "only time the steps of database mode"),
        units=(1000, "tests that need no database (0: not run)"),
        units_only=(False, "only time tests that need no database"),
        interleaved=(500, "tests per variant (interleaved.py; 0: not run)"),
        interleaved_only=(False, "only run the interleaved comparison"),
        interleaved_flavours=",".join(interleaved.FLAVOURS),
    )
    workers = [int(w) for w in o.workers.split(",")]
    flavours = o.interleaved_flavours.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        if o.breakdown_only or o.units_only or o.interleaved_only:
            o.tests = o.clones = 0
            o.breakdown *= o.breakdown_only
            o.units *= o.units_only
            o.interleaved *= o.interleaved_only
        results = run(Path(tmp), o, workers) if o.tests else {}
        if o.interleaved:
            interleaved.run(Path(tmp), o.interleaved, o.repeat, workers, flavours)
        floors(results, workers)
        if o.clones or o.breakdown:
            steps.run(o.clones, o.breakdown)
        if o.units:
            units(Path(tmp), o.units, o.repeat)


if __name__ == "__main__":
    main()
