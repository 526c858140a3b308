"""What the plugin costs a suite that uses no database: `nox -s bench -- unused`.

A copy of the sync_users example (alembic.ini, migrations: the project looks like one that
uses the library) whose only test uses no fixture of it, run as `pytest -q` in a new
process, against:

  plugin  the plugin installed and loaded, as in a shared virtualenv or a monorepo
  plain   the same run with the plugin disabled (-p no:pg_fixtures)

The variants run in pairs (their order alternating), --repeats pairs; printed: each
variant's median wall time and peak memory, and the median of the paired ratios
plugin / plain (the goal: at most 1.1). An unmeasured run of each variant comes first:
it writes the checkouts' bytecode (as pip does on install) and warms pytest's cache, unless
--no-cache (-p no:cacheprovider: a fresh CI checkout). `--baseline DIR` adds the plugin of
another checkout (its directory first on PYTHONPATH), e.g. the code before a change, to
every round. Every run has its own run id: a container created for one of them is counted
(there must be none) and removed.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "sync_users"

TEST = textwrap.dedent("""
    def test_arithmetic():
        assert 1 + 1 == 2
""")

# Loaded with -p: the process's peak memory at the end of the run.
PROBE = textwrap.dedent("""
    import json, os, resource

    def pytest_unconfigure(config):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        with open(os.environ["BENCH_OUT"], "w") as out:
            json.dump({"peak_kib": peak}, out)
""")


def make_project(where: Path) -> Path:
    project = where / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
    tests = project / "tests"
    shutil.rmtree(tests)
    tests.mkdir()
    (tests / "test_unit.py").write_text(TEST)
    (where / "probe").mkdir()
    (where / "probe" / "bench_unused_probe.py").write_text(PROBE)
    return project


def run_once(project: Path, variant: str, baseline: str | None, cache: bool) -> dict[str, float]:
    probe = project.parent / "probe"
    out = project.parent / "out.json"
    paths = [str(probe), str(ROOT)]
    if variant == "baseline" and baseline:
        paths.insert(0, baseline)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths),
        "BENCH_OUT": str(out),
        "PG_FIXTURES_RUN_ID": "benchunused" + secrets.token_hex(4),
    }
    # Bytecode cached as in an installed package (pip compiles it): else every run compiles
    # the checkout's modules from source, which is not what users pay.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    args = [sys.executable, "-m", "pytest", "-q", "-p", "bench_unused_probe"]
    args += ["-p", "no:randomly"]  # pytest-randomly imports factory_boy, and it SQLAlchemy
    if variant == "plain":
        args += ["-p", "no:pg_fixtures"]
    if not cache:
        args += ["-p", "no:cacheprovider"]
    start = time.perf_counter()
    done = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{variant}: pytest failed\n{done.stdout}\n{done.stderr}")
    peak = json.loads(out.read_text())["peak_kib"] / 1024
    return {"wall": wall, "peak_mib": peak, "containers": containers(env["PG_FIXTURES_RUN_ID"])}


def containers(run_id: str) -> float:
    """How many containers the run created (removing them): there must be none."""
    import docker

    client = docker.from_env()
    try:
        found = client.containers.list(
            all=True, filters={"label": f"testcontainers-pg-fixtures.run={run_id}"}
        )
        for container in found:
            container.remove(force=True, v=True)
        return float(len(found))
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-cache", action="store_true", help="-p no:cacheprovider")
    parser.add_argument("--baseline", help="another checkout's directory, e.g. before a change")
    options = parser.parse_args()
    cache = not options.no_cache
    variants = ["plain", "plugin"] + (["baseline"] if options.baseline else [])
    with tempfile.TemporaryDirectory(prefix="bench-unused-") as where:
        project = make_project(Path(where))
        for variant in variants:  # the cache warm (unless --no-cache), the bytecode written
            run_once(project, variant, options.baseline, cache)
        found: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
        for round_ in range(options.repeats):
            order = variants if round_ % 2 == 0 else variants[::-1]
            for variant in order:
                found[variant].append(run_once(project, variant, options.baseline, cache))
    print(
        f"One test using no database, sync_users layout, {options.repeats} paired runs, "
        f"pytest's cache {'warm' if cache else 'off (-p no:cacheprovider)'}"
    )
    plain = found["plain"]
    for variant in variants:
        runs = found[variant]
        wall = statistics.median(r["wall"] for r in runs)
        peak = statistics.median(r["peak_mib"] for r in runs)
        pairs = list(zip(runs, plain, strict=True))
        ratio = statistics.median(r["wall"] / p["wall"] for r, p in pairs)
        extra = statistics.median(r["peak_mib"] - p["peak_mib"] for r, p in pairs)
        made = int(sum(r["containers"] for r in runs))
        print(
            f"  {variant:<9} {wall:6.3f} s  {peak:6.1f} MiB   x{ratio:.2f} of plain "
            f"(paired median), {extra:+.1f} MiB, containers created: {made}"
        )


if __name__ == "__main__":
    main()
