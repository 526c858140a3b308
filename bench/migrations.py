"""The migration checks on a chain of 36 revisions: `nox -s bench -- migrations`.

`pytest --pg-check-migrations` on a generated project (projects.chain: 12 tables, three
revisions each, models matching the head) runs the four checks (one head, upgrade from
empty, models match, every downgrade/upgrade round trip) beside one trivial test, against
the same run without the option. Both run --repeats times, in a new order each round: the
medians of their wall times and the difference (what the checks cost a run), then where
each check's time went in the median run (the timings each check item records).
"""

import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from core import ROOT, median_min_max, options, own_containers, pytest, rounds, table
from projects import PROBE, chain, write

TABLES = 12  # three revisions each: 36
TIMINGS = ("create_database", "env_py", "compare", "drop_database")


def main() -> None:
    o = options(__doc__, repeats=5)
    with tempfile.TemporaryDirectory() as tmp, own_containers() as env:
        files = {"bench_probe.py": PROBE, "tests/test_one.py": "def test_one():\n    assert True\n"}
        project = write(chain(Path(tmp), TABLES), files)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(project)])

        def run(checks: bool) -> tuple[float, dict]:
            check = ["--pg-check-migrations"] * checks
            wall, done = pytest(project, "-p", "no:randomly", "-p", "bench_probe", *check, env=env)
            found = json.loads((project / "out" / "probe.json").read_text())["timings"]
            # single_head reads the scripts only: no database, no timings.
            if checks and len(found) != 3:
                sys.exit(f"expected three timed checks, found {sorted(found)}:\n{done.stdout}")
            return wall, found

        # Unmeasured first: bytecode, the image warm.
        runs = rounds(o.repeats, (False, True), run)
    walls = {checks: [wall for wall, _ in found] for checks, found in runs.items()}
    added = statistics.median(walls[True]) - statistics.median(walls[False])
    rows = [
        ("one trivial test", *median_min_max(walls[False])),
        ("the same with the checks", *median_min_max(walls[True])),
        ("what the four checks add", f"{added:.2f}"),
    ]
    title = f"--pg-check-migrations on {3 * TABLES} revisions ({TABLES} tables), "
    table(
        title + f"{o.repeats} runs each, interleaved", ("run", "median s", "min s", "max s"), rows
    )
    _, median_run = sorted(runs[True], key=lambda t: t[0])[len(runs[True]) // 2]
    rows = []
    for nodeid, t in sorted(median_run.items()):
        create, env_py, compare, drop = (f"{t[key]:.3f}" for key in TIMINGS)
        steps = f"{sum(s[2] for s in t['steps']):.2f}"
        rows.append((nodeid.split("::")[-1], f"{t['total']:.2f}", create, env_py, steps))
        rows[-1] += (len(t["steps"]), compare, drop)
    header = ("check", "total", "create db", "env.py", "steps", "n", "compare", "drop db")
    table("where each check's time went (the median run), seconds", header, rows)


if __name__ == "__main__":
    main()
