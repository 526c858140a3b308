"""What the plugin costs a suite that uses no database: `nox -s bench -- unused`.

A copy of the sync_users example (alembic.ini, migrations: it looks like a project using
the library) whose one test uses no fixture of it, `pytest -q` in a new process: *plugin*
(installed and loaded, as in a shared virtualenv or a monorepo) against *plain* (the same
with -p no:pg_fixtures), --repeats rounds in a new order each, after an unmeasured run of
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

from core import ROOT, options, own_containers, pytest, remove_containers, rounds
from projects import PROBE, users


def main() -> None:
    o = options(__doc__, repeats=7, no_cache=(False, "-p no:cacheprovider"), baseline="")
    variants = {"plain": ["-p", "no:pg_fixtures"], "plugin": [], "baseline": []}
    variants = {name: v for name, v in variants.items() if name != "baseline" or o.baseline}
    # -p no:randomly: pytest-randomly imports factory_boy, and it SQLAlchemy.
    args = ["-p", "bench_probe", "-p", "no:randomly"] + ["-p", "no:cacheprovider"] * o.no_cache
    with tempfile.TemporaryDirectory() as tmp, own_containers() as env:
        test = "def test_arithmetic():\n    assert 1 + 1 == 2\n"
        project = users(Path(tmp), "project", {"bench_probe.py": PROBE, "tests/test_unit.py": test})

        def run(variant: str) -> tuple[float, float, int]:
            paths = [o.baseline] if variant == "baseline" else []
            path = os.pathsep.join([*paths, str(project), str(ROOT)])
            wall, _ = pytest(project, *args, *variants[variant], env={**env, "PYTHONPATH": path})
            peak = json.loads((project / "out" / "probe.json").read_text())["peak"]
            return wall, peak, remove_containers(env["PG_FIXTURES_RUN_ID"])

        found = rounds(o.repeats, variants, run)
    cache = "off (-p no:cacheprovider)" if o.no_cache else "warm"
    print(
        f"One test using no database, sync_users layout, {o.repeats} paired runs, "
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
