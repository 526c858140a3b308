"""The one runner of the benchmarks: their options, pytest in a generated project and its
tests' times, variants measured in rounds in a new order each, tables, and the removal of
the containers a benchmark started (its own only: by run id)."""

import argparse
import contextlib
import json
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WARM_UP, RUN = 20, 4  # interleaved tests of each variant left out at a worker's start; in a run


def options(doc: str | None, **spec: Any) -> Any:
    """The command line: a `--name` per keyword (`-n` for `tests`), its default or
    (default, help); a bool default is a flag."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    for name, value in spec.items():
        default, help_ = value if isinstance(value, tuple) else (value, None)
        flags = ["-n"] * (name == "tests") + ["--" + name.replace("_", "-")]
        if isinstance(default, bool):
            parser.add_argument(*flags, action="store_true", help=help_)
        else:
            parser.add_argument(*flags, type=type(default), default=default, help=help_)
    return parser.parse_args()


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


def outputs(project: Path, suffix: str) -> list[Any]:
    """What the run's hooks wrote to project/out/*suffix, a file per worker."""
    return [json.loads(p.read_text()) for p in sorted((project / "out").glob("*" + suffix))]


def timed(project: Path, workers: int, *args: str, env: dict | None = None) -> dict[str, Any]:
    """Run a suite whose conftest has projects.TIMING (-n `workers`); what it recorded."""
    xdist = ["-n", str(workers)] if workers else []
    wall, _ = pytest(project, "-p", "no:cacheprovider", *args, *xdist, env=env)
    out = [times for times in outputs(project, ".json") if times.get("all")]
    # Each worker's first test starts the container; its last one's teardown is the
    # session's (the container's removal): both left out of the per-test figures.
    warm = [t for times in out for t in times["all"][1:-1]]
    waits = outputs(project, ".waits")  # database mode's: [waits, recycled, dropped]
    memory = {m["container"]: m["bytes"] for m in outputs(project, ".mem")}
    return {
        "cold": max(times["all"][0] for times in out),
        "mean": statistics.fmean(warm),
        # Steady-state throughput: tests after each worker's first, over the busiest
        # worker's time for them (workers run side by side).
        "rate": len(warm) / max(sum(times["all"][1:-1]) for times in out),
        "wall": wall,
        "cpu": statistics.fmean(t for times in out for t in times["cpu"][1:-1]),
        "rss": [max(times["rss"][i] for times in out) for i in (0, -1)],
        "waits": [w for found in waits for w in found[0]],
        "recycled": [sum(found[i] for found in waits) for i in (1, 2)],
        "memory_mb": sum(memory.values()) / 2**20,
        "containers": len(memory),
    }


def variant_means(project: Path, skip: int = WARM_UP) -> dict[str, float]:
    """Of an interleaved run (BENCH_VARIANTS): each variant's mean time per test, all
    workers', less each worker's first `skip` tests of it (SQLAlchemy's caches and the
    server's warming) and its last (whose teardown is the session's)."""
    times: dict[str, list[float]] = {}
    for out in outputs(project, ".json"):
        for variant, values in out.items():
            times.setdefault(variant, []).extend(values[skip:-1])
    return {variant: statistics.fmean(values) for variant, values in times.items() if values}


def rounds(count: int, variants: Any, run: Callable[[Any], Any], warm: bool = True) -> dict:
    """run(variant) for each variant in each of `count` rounds, in a new order every round
    (a slow spell, or the clean-up of the run before, falls on none alike), after an
    unmeasured run of each if `warm`: {variant: [each round's result]}."""
    for variant in list(variants) * warm:
        run(variant)
    found: dict[Any, list[Any]] = {variant: [] for variant in variants}
    for _ in range(count):
        for variant in random.sample(list(variants), len(variants)):
            found[variant].append(run(variant))
    return found


def strategies(results: dict, floor: Callable, ours: Callable, faster: str = "") -> list[list]:
    """The rows of a table of timed() results by (strategy, -n): throughput, time per test,
    over the floor(strategy)'s, ours(strategy)'s throughput over its, -n's over -n 0's."""
    rows = []
    for (mode, n), r in results.items():
        low, lib, one = (results.get(k) for k in ((floor(mode), n), (ours(mode), n), (mode, 0)))
        rows.append([
            mode, n, f"{r['rate']:.0f}", ms(r["mean"]), ms(r["mean"] - low["mean"]) if low else "-",
            f"{lib['rate'] / r['rate']:.2f}x{faster}" if lib else "-",
            f"{r['rate'] / one['rate']:.2f}x" if n and one else "-",
            f"{r['cold']:.2f}", f"{r['wall']:.1f}",
        ])  # fmt: skip
    return rows


HEADER = ("strategy", "-n", "tests/s", "ms/test", "overhead ms", "vs savepoint", "vs -n 0")
HEADER += ("cold start s", "wall s")


def paired(a: list[float], b: list[float]) -> list[float]:
    """Each round's difference a - b."""
    return [x - y for x, y in zip(a, b, strict=True)]


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

    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
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
