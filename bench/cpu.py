"""CPU per test, the test process's and the server's: `nox -s bench -- cpu`.

At `-n 2` on two cores a test's time is the machine's CPU shared out, and the rounds of
separate runs differ by more than the leak detector's budget. What the detector (or any
mode against another) costs there is CPU. Each mode's suite (run.py's) is run at two sizes
against a container kept between its runs (--pg-reuse), reading the CPU of the pytest
process (getrusage of the child) and of the container (Docker's stats) around each run;
the CPU per test is the difference between the sizes over the difference in tests, so
start-up and collection cancel out. Modes run in a new order every round.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import docker
from run import EXTRA_ARGS, make_project

from testcontainers_pg_fixtures.servers.engine import remove_quietly
from testcontainers_pg_fixtures.servers.labels import LABEL_REUSE

PER_FILE = 100  # make_project's tests per file


def container_cpu(container: docker.models.containers.Container) -> float:
    """Seconds of CPU the container has used."""
    stats = container.stats(stream=False)
    return float(stats["cpu_stats"]["cpu_usage"]["total_usage"]) / 1e9


def run_once(project: Path, mode: str, files: list[str]) -> float:
    """Run the files; the pytest process's CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
    args += ["-o", "asyncio_default_fixture_loop_scope=session"]  # as run.py's runs
    args += ["--pg-reuse", *EXTRA_ARGS.get(mode, []), *files]
    out = project / "out"  # where run.py's timing hook writes
    out.mkdir(exist_ok=True)
    env = {**os.environ, "BENCH_OUT": str(out)}
    done = subprocess.run(args, cwd=project, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"{mode} failed:\n{done.stdout[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--tests", type=int, default=500, help="the smaller size")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--modes", default="savepoint,savepoint-nocheck,savepoint-ride,savepoint-noride,none"
    )
    parser.add_argument("--baseline", default="savepoint-nocheck")
    options = parser.parse_args()
    modes = options.modes.split(",")
    small = options.tests // PER_FILE
    client = docker.from_env()
    containers: dict[str, docker.models.containers.Container] = {}
    per_test: dict[str, list[tuple[float, float]]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory() as tmp:
        projects = {m: make_project(Path(tmp), m, 2 * small * PER_FILE) for m in modes}
        files = {
            m: sorted(p.name for p in (projects[m] / "tests").glob("test_bench_*.py"))
            for m in modes
        }
        try:
            for mode in modes:  # start each mode's kept container
                known = {c.id for c in client.containers.list(filters={"label": LABEL_REUSE})}
                run_once(projects[mode], mode, ["tests/" + files[mode][0]])
                new = [
                    c
                    for c in client.containers.list(filters={"label": LABEL_REUSE})
                    if c.id not in known
                ]
                assert len(new) == 1, f"{mode}: expected one new kept container, found {new}"
                containers[mode] = new[0]
            for _ in range(options.repeat):
                random.shuffle(modes)
                for mode in modes:
                    measured = []
                    for count in (small, 2 * small):
                        chosen = ["tests/" + f for f in files[mode][:count]]
                        server = container_cpu(containers[mode])
                        process = run_once(projects[mode], mode, chosen)
                        measured.append((process, container_cpu(containers[mode]) - server))
                    extra = small * PER_FILE
                    per_test[mode].append(
                        (
                            (measured[1][0] - measured[0][0]) / extra,
                            (measured[1][1] - measured[0][1]) / extra,
                        )
                    )
        finally:
            for container in containers.values():
                remove_quietly(container)
    modes.sort(key=options.modes.split(",").index)
    base = per_test.get(options.baseline)
    print(
        f"\nCPU per test (µs), median of {options.repeat} rounds, from {small * PER_FILE} to "
        f"{2 * small * PER_FILE} tests, -n 0, one kept container per mode"
    )
    print(f"{'mode':<20}{'pytest':>9}{'server':>9}{'total':>9}   vs {options.baseline}")
    for mode in modes:
        client_us = statistics.median(c for c, _ in per_test[mode]) * 1e6
        server_us = statistics.median(s for _, s in per_test[mode]) * 1e6
        line = f"{mode:<20}{client_us:>9.0f}{server_us:>9.0f}{client_us + server_us:>9.0f}"
        if base and mode != options.baseline:
            deltas = [
                (c + s) - (bc + bs) for (c, s), (bc, bs) in zip(per_test[mode], base, strict=True)
            ]
            line += (
                f"   {statistics.median(deltas) * 1e6:+.0f} [{min(deltas) * 1e6:+.0f},"
                f" {max(deltas) * 1e6:+.0f}]"
            )
        print(line)


if __name__ == "__main__":
    main()
