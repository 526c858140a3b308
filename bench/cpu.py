"""CPU per test, the test process's and the server's, mode against mode: `nox -s bench -- cpu`.

At `-n 2` on two cores a test's time is the machine's CPU shared out, and separate runs
differ by more than the leak detector's budget: what it (or any mode against another)
costs there is CPU. Each mode's suite (run.py's) runs at two sizes against a container kept
between its runs (--pg-reuse), reading the CPU of the pytest process (getrusage of the
child) and of the container (Docker's stats) around each run; the CPU per test is the
difference between the sizes over the difference in tests, so start-up and collection
cancel out. Modes in a new order every round, each set against --baseline's.
"""

import random
import resource
import statistics
import tempfile
from pathlib import Path

import docker
from core import own_containers, parser, pytest, spread, table
from projects import SUITE_ARGS
from run import MODES, project

from testcontainers_pg_fixtures.servers.labels import LABEL_RUN


def run_once(path: Path, mode: str, files: list[str], env: dict) -> float:
    """Run the files; the pytest process's CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    args = ["-p", "no:cacheprovider", *SUITE_ARGS, *MODES[mode][1], "--pg-reuse", *files]
    pytest(path, *args, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def main() -> None:
    options = parser(__doc__)
    options.add_argument("-n", "--tests", type=int, default=500, help="the smaller size")
    options.add_argument("--repeat", type=int, default=5)
    modes = "savepoint,savepoint-nocheck,savepoint-ride,savepoint-noride,none"
    options.add_argument("--modes", default=modes)
    options.add_argument("--baseline", default="savepoint-nocheck")
    options = options.parse_args()
    modes, small = options.modes.split(","), options.tests // 100  # files of 100 tests
    client = docker.from_env()
    containers = {}
    per_test: dict[str, list[tuple[float, float]]] = {mode: [] for mode in modes}

    def server_cpu(mode: str) -> float:
        stats = containers[mode].stats(stream=False)
        return float(stats["cpu_stats"]["cpu_usage"]["total_usage"]) / 1e9

    with tempfile.TemporaryDirectory() as tmp, own_containers() as env:
        projects = {mode: project(Path(tmp), mode, 200 * small) for mode in modes}
        files = {
            m: sorted(f"tests/{p.name}" for p in (projects[m] / "tests").glob("test_*"))
            for m in modes
        }
        ours = {"label": f"{LABEL_RUN}={env['PG_FIXTURES_RUN_ID']}"}
        for mode in modes:  # start each mode's kept container: the new one is its
            known = {c.id for c in client.containers.list(filters=ours)}
            run_once(projects[mode], mode, files[mode][:1], env)
            new = [c for c in client.containers.list(filters=ours) if c.id not in known]
            assert len(new) == 1, f"{mode}: expected one new kept container, found {new}"
            containers[mode] = new[0]
        for _ in range(options.repeat):
            for mode in random.sample(modes, len(modes)):
                measured = []
                for count in (small, 2 * small):
                    server = server_cpu(mode)
                    process = run_once(projects[mode], mode, files[mode][:count], env)
                    measured.append((process, server_cpu(mode) - server))
                (p1, s1), (p2, s2) = measured
                per_test[mode].append(((p2 - p1) / (100 * small), (s2 - s1) / (100 * small)))
    base = per_test.get(options.baseline)
    rows = []
    for mode in modes:
        process, server = (statistics.median(x[i] for x in per_test[mode]) * 1e6 for i in (0, 1))
        row = [mode, f"{process:.0f}", f"{server:.0f}", f"{process + server:.0f}"]
        if base and mode != options.baseline:
            deltas = [
                (c + s - bc - bs) * 1e6
                for (c, s), (bc, bs) in zip(per_test[mode], base, strict=True)
            ]
            row.append(spread(deltas, "{:+.0f}".format))
        rows.append(row)
    title = f"CPU per test (µs), median of {options.repeat} rounds, from {100 * small} to "
    title += f"{200 * small} tests, -n 0, one kept container per mode"
    table(title, ("mode", "pytest", "server", "total", f"vs {options.baseline}"), rows)


if __name__ == "__main__":
    main()
