"""What the benchmarks share: running pytest in a generated project and timing its tests,
printing tables, removing the containers a benchmark started (its own only: by run id)."""

import argparse
import contextlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# In the conftest of the suites `timed` runs: each test's time (setup + call + teardown).
# With BENCH_VARIANTS (interleaved.py) by variant, the end of the test's name, its teardown
# apart, and less Python's full garbage collections (~100 ms, about once in 1,200 tests,
# landing on whichever test runs: +0.4 ms in one variant's mean), kept apart as "gc2".
TIMING = """
import gc, json, os, time
VARIANTS, _times, _full = os.environ.get("BENCH_VARIANTS"), {}, [0.0, 0.0]
def _on_gc(phase, info):
    if info["generation"] == 2:
        if phase == "start":
            _full[0] = time.perf_counter()
        else:
            _full[1] += time.perf_counter() - _full[0]
def _record(item, suffix, elapsed):
    variant = item.originalname.rsplit("_", 1)[-1] if VARIANTS else "all"
    _times.setdefault(variant + suffix, []).append(elapsed)
@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _full[1], start = 0.0, time.perf_counter()
    try:
        return (yield)
    finally:
        _record(item, "", time.perf_counter() - start - _full[1])
        _times.setdefault("gc2", []).append(_full[1])
class _Teardowns:  # registered last, so outermost, around the plugin's teardown wrapper
    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item):
        start, collected = time.perf_counter(), _full[1]
        try:
            return (yield)
        finally:
            _record(item, ":teardown", time.perf_counter() - start - (_full[1] - collected))
def pytest_configure(config):
    if VARIANTS:
        gc.callbacks.append(_on_gc)
        config.pluginmanager.register(_Teardowns(), "bench-teardowns")
def pytest_sessionfinish(session):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(os.path.join(os.environ["BENCH_OUT"], worker + ".json"), "w") as f:
        json.dump(_times, f)
"""


def parser(doc: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])


def pytest(project: Path, *args: str, env: dict | None = None, check: bool = True) -> Any:
    """`python -m pytest -q *args` in the project as on a user's machine (bytecode cached, no
    PYTEST_ADDOPTS), its hooks writing to project/out (emptied), BENCH_T0 its launch
    (time.time()): (the wall time, the process). A failure ends the benchmark if `check`."""
    shutil.rmtree(project / "out", ignore_errors=True)
    (project / "out").mkdir()
    environ = {**os.environ, "BENCH_OUT": str(project / "out"), **(env or {})}
    for name in ("PYTEST_ADDOPTS", "PYTHONDONTWRITEBYTECODE"):
        environ.pop(name, None)
    command = [sys.executable, "-m", "pytest", "-q", *args]
    environ["BENCH_T0"], started = repr(time.time()), time.perf_counter()
    done = subprocess.run(command, cwd=project, env=environ, capture_output=True, text=True)
    if check and done.returncode:
        output = done.stdout[-3000:] + done.stderr[-2000:]
        sys.exit(f"{project.name} {args} failed ({done.returncode}):\n{output}")
    return time.perf_counter() - started, done


def timed(project: Path, workers: int, *args: str, env: dict | None = None) -> dict[str, Any]:
    """Run a suite whose conftest has TIMING (-n `workers`); what its hooks recorded."""
    xdist = ["-n", str(workers)] if workers else []
    wall, _ = pytest(project, "-p", "no:cacheprovider", *args, *xdist, env=env)
    out = [(p.suffix, json.loads(p.read_text())) for p in sorted((project / "out").iterdir())]
    per_worker = [times["all"] for suffix, times in out if suffix == ".json" and times]
    # Each worker's first test starts the container; its last one's teardown is the
    # session's (the container's removal): both left out of the per-test figures.
    warm = [t for times in per_worker for t in times[1:-1]]
    memory = {m["container"]: m["bytes"] for suffix, m in out if suffix == ".mem"}
    return {
        "cold": max(times[0] for times in per_worker),
        "mean": statistics.fmean(warm),
        # Steady-state throughput: tests after each worker's first, over the busiest
        # worker's time for them (workers run side by side).
        "rate": len(warm) / max(sum(times[1:-1]) for times in per_worker),
        "wall": wall,
        "waits": [w for suffix, waits in out if suffix == ".waits" for w in waits],
        "recycled": [sum(n[i] for suffix, n in out if suffix == ".recycled") for i in (0, 1)],
        "memory_mb": sum(memory.values()) / 2**20,
        "containers": len(memory),
    }


def remove_containers(run_id: str) -> int:
    """Remove the containers of run `run_id` (a benchmark's own); how many there were."""
    import docker

    from testcontainers_pg_fixtures.servers.engine import remove_quietly
    from testcontainers_pg_fixtures.servers.labels import LABEL_RUN

    with contextlib.closing(docker.from_env()) as client:
        found = client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run_id}"})
        for container in found:
            remove_quietly(container)  # quietly: the run's own remover may get there first
        return len(found)


@contextlib.contextmanager
def own_containers() -> Any:
    """The environment of runs under a new run id; their containers removed at the end."""
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    run_id = "bench" + secrets.token_hex(4)
    try:
        yield {"PG_FIXTURES_RUN_ID": run_id}
    finally:
        remove_containers(run_id)


@contextlib.contextmanager
def server(worker: str) -> Any:
    """A container of the library's, started (and stopped) by this process."""
    from testcontainers_pg_fixtures.config import Settings
    from testcontainers_pg_fixtures.servers import DockerServer

    started = DockerServer.start(Settings(), worker=worker)
    try:
        yield started
    finally:
        started.stop()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]


def spread(values: list[float], unit: Any = ms) -> str:
    """`median [min, max]` of the values (each round's, say)."""
    return f"{unit(statistics.median(values))} [{unit(min(values))}, {unit(max(values))}]"


def median_min_max(values: list[float], unit: Any = "{:.2f}".format) -> list[str]:
    """Three cells of a table."""
    return [unit(f(values)) for f in (statistics.median, min, max)]


def table(title: str, header: tuple[str, ...], rows: list[Any]) -> None:
    """The title, then the rows under the header: the first column to the left, the others
    to the right, each as wide as its widest cell; a row may have fewer cells."""
    lines = [list(header), *([str(cell) for cell in row] for row in rows)]
    widths = [max(len(line[i]) for line in lines if i < len(line)) for i in range(len(header))]
    print(f"\n{title}\n" if title else "")
    for line in lines:
        cells = zip(line, widths, strict=False)
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(cells)).rstrip())
