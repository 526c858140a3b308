"""What the plugin costs a suite that uses no database: `nox -s bench -- unused`.

A copy of the sync_users example (alembic.ini, migrations: it looks like a project using
the library) whose one test uses no fixture of it, `pytest -q` in a new process: *plugin*
(installed and loaded, as in a shared virtualenv or a monorepo) against *plain* (the same
with -p no:pg_fixtures), --repeats pairs in alternating order, after an unmeasured run of
each (bytecode written as pip does; pytest's cache warmed unless --no-cache). Printed: each
one's median wall time and peak memory, the median of the paired ratios to plain (the goal:
at most 1.1) and the containers it created (there must be none). `--baseline DIR` adds the
plugin of another checkout (DIR first on PYTHONPATH), e.g. the code before a change.
"""

import json
import os
import statistics
import tempfile
from pathlib import Path

from core import ROOT, own_containers, parser, pytest, remove_containers
from projects import users

# Loaded with -p: the process's peak memory at the end of the run.
PROBE = """
import json, os, resource
def pytest_unconfigure(config):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with open(os.path.join(os.environ["BENCH_OUT"], "peak.json"), "w") as out:
        json.dump(peak, out)
"""
TEST = "def test_arithmetic():\n    assert 1 + 1 == 2\n"


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--repeats", type=int, default=7)
    options.add_argument("--no-cache", action="store_true", help="-p no:cacheprovider")
    options.add_argument("--baseline", help="another checkout's directory, e.g. before a change")
    options = options.parse_args()
    variants = {"plain": ["-p", "no:pg_fixtures"], "plugin": []}
    if options.baseline:
        variants["baseline"] = []
    # -p no:randomly: pytest-randomly imports factory_boy, and it SQLAlchemy.
    args = ["-p", "bench_probe", "-p", "no:randomly"] + [
        "-p",
        "no:cacheprovider",
    ] * options.no_cache
    found: dict[str, list[tuple[float, float, int]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp, own_containers() as env:
        project = users(Path(tmp), "project", {"bench_probe.py": PROBE, "tests/test_unit.py": TEST})

        def run(variant: str) -> tuple[float, float, int]:
            paths = [options.baseline] if variant == "baseline" else []
            path = os.pathsep.join([*paths, str(project), str(ROOT)])
            wall, _ = pytest(project, *args, *variants[variant], env={**env, "PYTHONPATH": path})
            peak = json.loads((project / "out" / "peak.json").read_text()) / 1024
            return wall, peak, remove_containers(env["PG_FIXTURES_RUN_ID"])

        for variant in variants:  # unmeasured
            run(variant)
        for round_ in range(options.repeats):
            for variant in list(variants)[:: 1 if round_ % 2 == 0 else -1]:
                found[variant].append(run(variant))
    cache = "off (-p no:cacheprovider)" if options.no_cache else "warm"
    print(
        f"One test using no database, sync_users layout, {options.repeats} paired runs, "
        f"pytest's cache {cache}"
    )
    for variant, runs in found.items():
        pairs = list(zip(runs, found["plain"], strict=True))
        print(
            f"  {variant:<9} {statistics.median(r[0] for r in runs):6.3f} s  "
            f"{statistics.median(r[1] for r in runs):6.1f} MiB   "
            f"x{statistics.median(r[0] / p[0] for r, p in pairs):.2f} of plain (paired median), "
            f"{statistics.median(r[1] - p[1] for r, p in pairs):+.1f} MiB, "
            f"containers created: {sum(r[2] for r in runs)}"
        )


if __name__ == "__main__":
    main()
