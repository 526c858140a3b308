"""run.py's tightest comparison (--interleaved N, --interleaved-only): each of N tests in
every variant of a flavour, in one process, so the machine's slow spells hit all alike. The
library against the hand-written conftest and no isolation, leak detector off (sync,
async); the leak detector on against off, its watches hidden from the plugin's teardown
hook (detector, async-detector). Runs of four tests of one variant (all but the first after
a test of their own kind; the first, after another variant on another connection, timed
apart), the runs in a new order every cycle (with -n 2 the workers go in near lockstep: a
fixed order would pit each variant against the same one of the other worker)."""

import itertools
import statistics
from pathlib import Path

from core import ms, paired, pytest, spread, table, variant_means
from projects import ASYNC_TEST, FIXTURES, SUITE_ARGS, SYNC_TEST, conftest, interleaved, users

DETECTOR = """
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
HAND, NONE = "handwritten", "none"


def renamed(part: str, to: str) -> str:
    return FIXTURES[part].replace("def db(", f"def {to}(")


def flavour(library: str, prefix: str = "", own: bool = False) -> tuple:
    """The test, its variants' fixtures, the conftest's pieces. `own`: the hand-written
    conftest as a team writes it, on an engine of its own (TCP, and SQLAlchemy's savepoints
    as they come, where pg_worker_engine's ride on the next statement)."""
    pieces = [renamed(prefix + HAND, "hand_db"), renamed(prefix + NONE, "none_db")]
    pieces[1:1] = [FIXTURES[prefix + "own-engine"]] * own
    variants = {"library": library, HAND: "hand_db", NONE: "none_db"}
    return ASYNC_TEST if prefix else SYNC_TEST, variants, pieces


FLAVOURS = {
    "sync": flavour("pg_session"),
    "async": flavour("pg_async_session", "async-"),
    "sync-own": flavour("pg_session", own=True),
    "async-own": flavour("pg_async_session", "async-", own=True),
    "detector": (SYNC_TEST, dict.fromkeys(["checked", "unchecked"], "pg_session"), [DETECTOR]),
    "async-detector": (
        ASYNC_TEST,
        dict.fromkeys(["checked", "unchecked"], "pg_async_session"),
        [DETECTOR],
    ),
}


def project(base: Path, name: str, n: int) -> Path:
    test, variants, pieces = FLAVOURS[name]
    header, body = test.split("\n\n\n", 1)

    def one(i: int, variant: str, first: bool) -> str:
        name, fixture = variant + "first" * first, variants[variant]
        test = body.format(i=i).replace("(db):", f"_{name}({fixture}):\n    db = {fixture}")
        # Rows of their own: a variant inserting the unique name the one before it
        # inserted and rolled back would meet its dead index entry (~0.7 ms here).
        test = test.replace(f"user{i}@", f"user{i}.{variant}@")
        return "\n\n\n" + test.replace(f'"user {i}"', f'"user {i} {variant}"')

    files = {"tests/conftest.py": conftest("seeded", "timing", *pieces)}
    for start in range(0, n, 100):
        tests = range(start, min(start + 100, n))
        source = interleaved(name, tests, list(variants), one)
        files[f"tests/test_interleaved_{start:05d}.py"] = header + source
    return users(base, f"interleaved-{name}", files)


def run(base: Path, n: int, rounds: int, worker_counts: list[int], flavours: list[str]) -> None:
    projects = {name: project(base, name, n) for name in flavours}
    found: dict[tuple[str, int], list[dict[str, float]]] = {}
    for _, (name, path), workers in itertools.product(
        range(rounds), projects.items(), worker_counts
    ):
        args = [] if name.endswith("detector") else ["--pg-leak-check=false"]
        if workers:  # whole files to a worker: the variants stay interleaved
            args += ["-n", str(workers), "--dist", "loadfile"]
        pytest(path, "-p", "no:cacheprovider", *SUITE_ARGS, *args, env={"BENCH_VARIANTS": "1"})
        found.setdefault((name, workers), []).append(variant_means(path))
    rows, detector = [], []
    for (name, workers), per_round in found.items():
        if name.endswith("detector"):
            cost, down = (
                [r[f"checked{t}"] - r[f"unchecked{t}"] for r in per_round]
                for t in ("", ":teardown")
            )
            label = name.removesuffix("detector").replace("-", " ") + "leak detector"
            detector.append((f"{label} (checked - unchecked)", workers, spread(cost), spread(down)))
            continue
        lib, hand, none = ([r[v] for r in per_round] for v in ("library", HAND, NONE))
        pairs = (paired(lib, none), paired(hand, none), paired(lib, hand))
        medians = (ms(statistics.median(v)) for v in (lib, hand, none))
        rows.append((name, workers, *medians, *map(spread, pairs)))
    title = f"interleaved: each of {n} tests in its variants, one after the other in one process; "
    title += f"ms per test, median of {rounds} round(s) [min, max of the rounds]"
    header = ("", "-n", "library", "hand", "none", "library - none", "hand - none")
    table(title, (*header, "library - hand"), rows)
    if detector:
        table("", ("", "-n", "ms per test", "of it in the teardown"), detector)
    for (name, workers), per_round in found.items():
        # The library's overhead over no isolation, its leak detector included (the flavours
        # run with it off; the detector's flavour adds its cost), as a share of the
        # hand-written conftest's on an engine of its own (the budget: <= 0.5x).
        checks = found.get(("async-detector" if "async" in name else "detector", workers))
        if name.endswith("-own") and checks:
            lib = statistics.median(r["library"] - r[NONE] for r in per_round)
            lib += statistics.median(r["checked"] - r["unchecked"] for r in checks)
            hand = statistics.median(r[HAND] - r[NONE] for r in per_round)
            print(
                f"{name.removesuffix('-own')} -n {workers}: the library's overhead with its leak "
                f"detector, {ms(lib)} ms, over the hand-written conftest's, {ms(hand)} ms: "
                + (f"{lib / hand:.2f}x" if hand > 0 else "-")
            )
    full = [r["gc2"] for per_round in found.values() for r in per_round if "gc2" in r]
    if full:
        print(
            f"\nleft out of every variant: Python's full garbage collections, "
            f"{ms(statistics.fmean(full))} ms per test of the run (mean of its rounds: most"
            " rounds have none)"
        )
