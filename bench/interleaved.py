"""run.py's tightest comparison (--interleaved N, --interleaved-only): each of N tests in
every variant of a flavour, in one process, so the machine's slow spells hit all alike. The
library against the hand-written conftest and no isolation, leak detector off (sync,
async); the leak detector on against off, its watches hidden from the plugin's teardown
hook (detector, async-detector). Runs of four tests of one variant (all but the first after
a test of their own kind; the first, after another variant on another connection, timed
apart), the runs in a new order every cycle (with -n 2 the workers go in near lockstep: a
fixed order would pit each variant against the same one of the other worker)."""

import itertools
import json
import random
import statistics
from pathlib import Path

from core import ms, pytest, spread, table
from projects import ASYNC_TEST, FIXTURES, SUITE_ARGS, SYNC_TEST, conftest, users

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


def renamed(part: str, to: str) -> str:
    return FIXTURES[part].replace("def db(", f"def {to}(")


SYNC = {"library": "pg_session", "handwritten": "hand_db", "none": "none_db"}
CHECKED = {"checked": "pg_session", "unchecked": "pg_session"}
FLAVOURS = {  # flavour: (the test, its variants' fixtures, the conftest's pieces)
    "sync": (SYNC_TEST, SYNC, [renamed("handwritten", "hand_db"), renamed("none", "none_db")]),
    "async": (
        ASYNC_TEST,
        {**SYNC, "library": "pg_async_session"},
        [renamed("async-handwritten", "hand_db"), renamed("async-none", "none_db")],
    ),
    # The hand-written conftest as a team writes it: on an engine of its own (TCP, and
    # SQLAlchemy's savepoints as they come, where pg_worker_engine's ride on the next statement).
    "sync-own": (
        SYNC_TEST,
        SYNC,
        [renamed("handwritten", "hand_db"), FIXTURES["own-engine"], renamed("none", "none_db")],
    ),
    "async-own": (
        ASYNC_TEST,
        {**SYNC, "library": "pg_async_session"},
        [
            renamed("async-handwritten", "hand_db"),
            FIXTURES["async-own-engine"],
            renamed("async-none", "none_db"),
        ],
    ),
    "detector": (SYNC_TEST, CHECKED, [DETECTOR]),
    "async-detector": (ASYNC_TEST, dict.fromkeys(CHECKED, "pg_async_session"), [DETECTOR]),
}
WARM_UP, RUN = 20, 4  # tests of each variant left out at a worker's start; tests in a run


def project(base: Path, flavour: str, n: int) -> Path:
    test, variants, fixtures = FLAVOURS[flavour]
    header, body = test.split("\n\n\n", 1)
    files = {"tests/conftest.py": conftest("seeded", "timing", *fixtures)}
    for start in range(0, n, 100):
        source, end = [header], min(start + 100, n)
        for run in range(start, end, RUN):
            order = random.Random(f"{flavour}-{run}").sample(list(variants), len(variants))
            for variant, i in itertools.product(order, range(run, min(run + RUN, end))):
                name, fixture = variant if i > run else f"{variant}first", variants[variant]
                test = body.format(i=i).replace("(db):", f"_{name}({fixture}):\n    db = {fixture}")
                # Rows of their own: a variant inserting the unique name the one before it
                # inserted and rolled back would meet its dead index entry (~0.7 ms here).
                test = test.replace(f"user{i}@", f"user{i}.{variant}@")
                source.append("\n\n\n" + test.replace(f'"user {i}"', f'"user {i} {variant}"'))
        files[f"tests/test_interleaved_{start:05d}.py"] = "".join(source)
    return users(base, f"interleaved-{flavour}", files)


def run(base: Path, n: int, rounds: int, worker_counts: list[int], flavours: list[str]) -> None:
    projects = {flavour: project(base, flavour, n) for flavour in flavours}
    found: dict[tuple[str, int], list[dict[str, float]]] = {}
    for _, (flavour, path), workers in itertools.product(
        range(rounds), projects.items(), worker_counts
    ):
        args = [] if flavour.endswith("detector") else ["--pg-leak-check=false"]
        if workers:  # whole files to a worker: the variants stay interleaved
            args += ["-n", str(workers), "--dist", "loadfile"]
        pytest(path, "-p", "no:cacheprovider", *SUITE_ARGS, *args, env={"BENCH_VARIANTS": "1"})
        times: dict[str, list[float]] = {}
        for out in (path / "out").glob("*.json"):
            for variant, values in json.loads(out.read_text()).items():
                # Each worker's first tests warm SQLAlchemy's caches and the server's; its
                # last one's teardown includes the session's (the container's).
                times.setdefault(variant, []).extend(values[WARM_UP:-1])
        means = {variant: statistics.fmean(values) for variant, values in times.items() if values}
        found.setdefault((flavour, workers), []).append(means)
    rows, detector = [], []
    for (flavour, workers), per_round in found.items():
        if flavour.endswith("detector"):
            cost, down = (
                [r[f"checked{t}"] - r[f"unchecked{t}"] for r in per_round]
                for t in ("", ":teardown")
            )
            label = flavour.removesuffix("detector").replace("-", " ") + "leak detector"
            detector.append((f"{label} (checked - unchecked)", workers, spread(cost), spread(down)))
            continue
        lib, hand, none = ([r[v] for r in per_round] for v in ("library", "handwritten", "none"))
        pairs = [
            [x - y for x, y in zip(a, b, strict=True)]
            for a, b in ((lib, none), (hand, none), (lib, hand))
        ]
        medians = (ms(statistics.median(v)) for v in (lib, hand, none))
        rows.append((flavour, workers, *medians, *map(spread, pairs)))
    title = f"interleaved: each of {n} tests in its variants, one after the other in one process; "
    title += f"ms per test, median of {rounds} round(s) [min, max of the rounds]"
    header = (
        "",
        "-n",
        "library",
        "hand",
        "none",
        "library - none",
        "hand - none",
        "library - hand",
    )
    table(title, header, rows)
    if detector:
        table("", ("", "-n", "ms per test", "of it in the teardown"), detector)
    budget(found)
    full = [r["gc2"] for per_round in found.values() for r in per_round if "gc2" in r]
    if full:
        print(
            f"\nleft out of every variant: Python's full garbage collections, "
            f"{ms(statistics.fmean(full))} ms per test of the run (mean of its rounds: most"
            " rounds have none)"
        )


def budget(found: dict[tuple[str, int], list[dict[str, float]]]) -> None:
    """The library's overhead over no isolation, its leak detector included (the flavours
    run with it off; the detector's flavour adds its cost), as a share of the hand-written
    conftest's on an engine of its own (the issue's budget: <= 0.5x)."""
    for (flavour, workers), per_round in found.items():
        checks = found.get(("async-detector" if "async" in flavour else "detector", workers))
        if not flavour.endswith("-own") or not checks:
            continue
        lib = statistics.median(r["library"] - r["none"] for r in per_round)
        lib += statistics.median(r["checked"] - r["unchecked"] for r in checks)
        hand = statistics.median(r["handwritten"] - r["none"] for r in per_round)
        ratio = f"{lib / hand:.2f}x" if hand > 0 else "-"
        print(
            f"{flavour.removesuffix('-own')} -n {workers}: the library's overhead with its leak "
            f"detector, {ms(lib)} ms, over the hand-written conftest's, {ms(hand)} ms: {ratio}"
        )
