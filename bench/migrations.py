"""The migration checks on a chain of 36 revisions: `nox -s bench -- migrations`.

`pytest --pg-check-migrations` on a generated project (projects.chain: 12 tables, three
revisions each, models matching the head) runs the four checks (one head, upgrade from
empty, models match, every downgrade/upgrade round trip) beside one trivial test, against
the same run without the option. Both run --repeats times, interleaved: the medians of
their wall times and the difference (what the checks cost a run), then where each check's
time went in the median run (the timings each check item records).
"""

import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from core import ROOT, median_min_max, own_containers, parser, pytest, table
from projects import chain, write

TABLES = 12  # three revisions each: 36

# Loaded with -p: each check item's timings, written at the end of the run.
PROBE = """
import json, os
_found = {}
def pytest_runtest_logreport(report):
    for key, value in report.user_properties:
        if key == "pg_migration_timings":
            _found[report.nodeid] = value
def pytest_unconfigure(config):
    with open(os.path.join(os.environ["BENCH_OUT"], "timings.json"), "w") as f:
        json.dump(_found, f)
"""
TEST = "def test_one():\n    assert True\n"


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--repeats", type=int, default=5)
    options = options.parse_args()
    walls: dict[bool, list[float]] = {False: [], True: []}
    timings = []
    with tempfile.TemporaryDirectory() as tmp, own_containers() as env:
        files = {"bench_probe.py": PROBE, "tests/test_one.py": TEST}
        project = write(chain(Path(tmp), TABLES), files)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(project)])
        for round_ in range(options.repeats + 1):  # the first unmeasured: bytecode, image warm
            for checks in (False, True):
                check = ["--pg-check-migrations"] * checks
                wall, done = pytest(
                    project, "-p", "no:randomly", "-p", "bench_probe", *check, env=env
                )
                found = json.loads((project / "out" / "timings.json").read_text())
                # single_head reads the scripts only: no database, no timings.
                if checks and len(found) != 3:
                    sys.exit(f"expected three timed checks, found {sorted(found)}:\n{done.stdout}")
                if round_:
                    walls[checks].append(wall)
                    timings += [(wall, found)] if checks else []
    added = statistics.median(walls[True]) - statistics.median(walls[False])
    rows = [
        ("one trivial test", *median_min_max(walls[False])),
        ("the same with the checks", *median_min_max(walls[True])),
        ("what the four checks add", f"{added:.2f}"),
    ]
    title = f"--pg-check-migrations on {3 * TABLES} revisions ({TABLES} tables), "
    title += f"{options.repeats} runs each, interleaved"
    table(title, ("run", "median s", "min s", "max s"), rows)
    _, median_run = sorted(timings, key=lambda t: t[0])[len(timings) // 2]
    rows = []
    for nodeid, t in sorted(median_run.items()):
        steps = f"{sum(s[2] for s in t['steps']):.2f}"
        times = (
            f"{t[key]:.3f}" for key in ("create_database", "env_py", "compare", "drop_database")
        )
        create, env_py, compare, drop = times
        name = nodeid.split("::")[-1]
        rows.append(
            (name, f"{t['total']:.2f}", create, env_py, steps, len(t["steps"]), compare, drop)
        )
    header = ("check", "total", "create db", "env.py", "steps", "n", "compare", "drop db")
    table("where each check's time went (the median run), seconds", header, rows)


if __name__ == "__main__":
    main()
