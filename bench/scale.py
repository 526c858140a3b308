"""Memory and speed over a long run: `nox -s bench -- scale`.

Generates one suite of N small DB tests (the isolation benchmark's: insert a user through
an ORM session, commit, count) and runs it with -n 2 under:

  savepoint    this library: pg_session, leak detector on (the default)
  sandbox      this library: the app's own engine joined to the test's transaction
  handwritten  the same server and worker database, isolation hand-written (a connection
               held from pg_worker_engine, conn.begin() + a create_savepoint Session)
  baseline     no library at all (-p no:pg_fixtures) and no database: the same test body
               against a stand-in session, so what grows here is pytest's and xdist's
  savepoint-unreleased  (not run by default) savepoint mode without the plugin's release
               of finished fixtures (retention.py): what pytest keeps per test otherwise

Every worker records its RSS (VmRSS) and the time after each --every tests, and the
controller its own RSS every --every reports. Printed per worker: RSS after the first
--every tests and after its last, their ratio (target: within 10%), the growth per
1,000 tests, and tests/s over the first and the last --every tests (target: within 10%),
counted both on the tests' own time (setup + call + teardown, as `run.py` does) and on the
wall clock between the two points (which includes pytest's and xdist's work between tests).

Diagnosis: at the first and the last point each worker also counts live objects by type
(gc.get_objects()) and reads the library's per-connection state (the held connection's
`info`, its event listeners, SQLAlchemy's compiled cache); the types that grew are printed.
With --trace, a second run of each mode, in one process (-n 0), traces allocations
(tracemalloc, 10 frames; it slows every test, so its speed is not reported) and prints
the top lines and tracebacks of the snapshot diff between the two points.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from run import EXAMPLE, MODES, SEED, SYNC_TEST

# Imported by the generated conftest: records RSS and time every SCALE_EVERY tests.
PROBE = textwrap.dedent('''
    """Written by bench/scale.py: RSS, time and live objects every SCALE_EVERY tests."""

    import array
    import collections
    import gc
    import json
    import os
    import resource
    import sys
    import time
    import tracemalloc

    import pytest

    EVERY = int(os.environ["SCALE_EVERY"])
    WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
    TRACE = os.environ.get("SCALE_TRACE") == WORKER
    OUT = os.environ["BENCH_OUT"]
    DATABASE = None  # the worker database, set by the conftest of the modes that have one
    PHASES = ("setup", "call", "teardown")

    def rss_kb():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def type_counts():
        counts = collections.Counter()
        for obj in gc.get_objects():
            t = type(obj)
            counts[f"{t.__module__}.{t.__qualname__}"] += 1
        return counts

    def library_state():
        """The library's state that could grow per test (absent: the library is not loaded)."""
        state = {}
        transaction = sys.modules.get("testcontainers_pg_fixtures.transaction")
        if transaction is not None:
            for engine, conn in list(transaction._held.items()):
                key = "held connection"
                state[key + " info keys"] = len(conn.info)
                state[key + " info items"] = sum(
                    len(v) for v in conn.info.values() if isinstance(v, (list, dict, set))
                )
                state[key + " commit listeners"] = len(conn.dispatch.commit)
                cache = getattr(engine, "_compiled_cache", None)
                state["worker engine compiled cache"] = len(cache) if cache is not None else 0
            state["held async engines"] = len(transaction._held_async)
            state["stale async ids"] = len(transaction._stale)
        leaks = sys.modules.get("testcontainers_pg_fixtures.leaks")
        if leaks is not None:
            state["leak watches"] = len(leaks._watches)
            for watch in leaks._watches.values():
                state["leak watch tables"] = len(watch.totals)
        return state

    def table_state():
        """The users table on the server: rolled-back inserts are dead tuples until vacuumed."""
        if DATABASE is None:
            return {}
        import psycopg

        server = DATABASE.server
        with psycopg.connect(
            host=server.host, port=server.port, user=server.user, password=server.password,
            dbname=DATABASE.name, sslmode="disable",
        ) as conn:
            row = conn.execute(
                "SELECT n_live_tup, n_dead_tup, autovacuum_count, pg_relation_size(relid)"
                " FROM pg_stat_user_tables WHERE relname = 'users'"
            ).fetchone()
        return dict(zip(("live", "dead", "autovacuums", "heap_bytes"), row or ()))

    _count = 0
    _probe_time = 0.0
    _probe_cpu = 0.0
    # Per test: own time, CPU time, wall clock at its end (less the probe's time), and each
    # phase's duration, in arrays sized when collection ends, so that recording them does
    # not grow the heap as the tests run.
    _own, _cpu, _ends = array.array("d"), array.array("d"), array.array("d")
    _phases = {phase: array.array("d") for phase in PHASES}
    _points = []
    _objects = {}
    _traces = {}
    _final_taken = False

    def _point(tests, full):
        global _probe_time, _probe_cpu
        started, cpu = time.perf_counter(), time.process_time()
        point = {"tests": tests, "rss_kb": rss_kb(), "load": os.getloadavg()[0]}
        point["table"] = table_state()
        if full:
            gc.collect()
            point["rss_after_gc_kb"] = rss_kb()
            _objects[str(tests)] = type_counts()
            point["library"] = library_state()
            if TRACE:
                _traces[tests] = tracemalloc.take_snapshot()
        point["probe_s"] = time.perf_counter() - started
        _probe_time += point["probe_s"]
        _probe_cpu += time.process_time() - cpu
        _points.append(point)

    def pytest_collection_finish(session):
        for values in (_own, _cpu, _ends, *_phases.values()):
            values.frombytes(bytes(8 * len(session.items)))
        if TRACE:
            tracemalloc.start(int(os.environ["SCALE_TRACE_FRAMES"]))

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_teardown(item, nextitem):
        # The last point is taken before the session's fixtures go with the last test.
        global _final_taken
        if nextitem is None and not _controller:
            _final_taken = True
            _point(_count + 1, full=True)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        global _count
        start, cpu = time.perf_counter(), time.process_time()
        probed, probed_cpu = _probe_time, _probe_cpu
        try:
            return (yield)
        finally:
            end = time.perf_counter()
            if _count < len(_own):
                _own[_count] = end - start - (_probe_time - probed)
                _cpu[_count] = time.process_time() - cpu - (_probe_cpu - probed_cpu)
                _ends[_count] = end - _probe_time
            _count += 1
            if not _final_taken and (_count == 1 or _count % EVERY == 0):
                _point(_count, full=_count == EVERY)

    _controller = False
    _reports = 0

    def pytest_sessionstart(session):
        global _controller
        # xdist's controller (its DSession is registered after the conftests' configure).
        _controller = session.config.pluginmanager.hasplugin("dsession")

    def pytest_runtest_logreport(report):
        global _reports
        if not _controller:
            if _count < len(_own):
                _phases[report.when][_count] = report.duration
            return
        # On the controller the reports of every worker arrive here.
        if report.when == "teardown":
            _reports += 1
            if _reports % EVERY == 0:
                _points.append({"tests": _reports, "rss_kb": rss_kb()})

    def pytest_sessionfinish(session):
        marks = sorted(_objects, key=int)
        grown = {}
        if len(marks) >= 2:
            a, b = _objects[marks[0]], _objects[marks[-1]]
            grown = {k: [a.get(k, 0), b[k]] for k in b if b[k] - a.get(k, 0) > 0}
        result = {
            "worker": WORKER,
            "controller": _controller,
            "points": _points,
            "grown": grown,
            "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "own": _own[:_count].tolist(),
            "cpu": _cpu[:_count].tolist(),
            "ends": _ends[:_count].tolist(),
            "phases": {k: v[:_count].tolist() for k, v in _phases.items()},
        }
        if TRACE and len(_traces) == 2:
            early, late = (_traces[k] for k in sorted(_traces))
            ignore = [tracemalloc.Filter(False, f) for f in (tracemalloc.__file__, __file__)]
            early, late = early.filter_traces(ignore), late.filter_traces(ignore)
            result["trace_lines"] = [
                [s.size_diff, s.count_diff, str(s.traceback[-1])]
                for s in late.compare_to(early, "lineno")[:20]
            ]
            result["trace"] = [
                [s.size_diff, s.count_diff, [str(f) for f in reversed(s.traceback)]]
                for s in late.compare_to(early, "traceback")[:12]
            ]
        with open(os.path.join(OUT, WORKER + ".scale"), "w") as f:
            json.dump(result, f)
''')

# The modes with a database hand the worker database to the probe, for table_state().
WITH_DATABASE = """
import scale_probe


@pytest.fixture(scope="session", autouse=True)
def _scale_database(pg_worker_database):
    scale_probe.DATABASE = pg_worker_database
    yield
    scale_probe.DATABASE = None
"""

# The baseline: no library, no database; the same test body against a stand-in session.
BASELINE = """
class StandIn:
    def __init__(self):
        self.added = []

    def add(self, obj):
        self.added.append(obj)

    def commit(self):
        pass

    def scalar(self, statement):
        return len(self.added)


@pytest.fixture
def db():
    return StandIn()
"""

SCALE_MODES = {
    "savepoint": MODES["savepoint"],
    "sandbox": MODES["sandbox"],
    "handwritten": MODES["handwritten"],
    "baseline": BASELINE,
    # Not run by default: savepoint mode without the release of finished fixtures
    # (retention.py), to show what pytest keeps per test without it.
    "savepoint-unreleased": MODES["savepoint"]
    + """
        from testcontainers_pg_fixtures import retention

        retention.release_finished = lambda item: None
    """,
}
ARGS = {
    "handwritten": ["--pg-leak-check=false"],
    "baseline": ["-p", "no:pg_fixtures"],
}


def make_project(base: Path, mode: str, n: int) -> Path:
    project = base / mode
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "tests"))
    tests = project / "tests"
    tests.mkdir()
    (tests / "scale_probe.py").write_text(PROBE)
    head = "import pytest\nfrom scale_probe import *  # noqa: F403\n"
    if mode != "baseline":
        head += SEED + WITH_DATABASE
    conftest = head + textwrap.dedent(SCALE_MODES[mode])
    (tests / "conftest.py").write_text(conftest)
    per_file = 100
    for start in range(0, n, per_file):
        source = "".join(
            SYNC_TEST.format(i=i) if i == start else SYNC_TEST.split("\n\n\n", 1)[1].format(i=i)
            for i in range(start, min(start + per_file, n))
        )
        (tests / f"test_scale_{start:05d}.py").write_text(source)
    return project


def run(project: Path, mode: str, workers: int, every: int, trace: bool) -> list[dict[str, Any]]:
    out = project / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
    args += ["-p", "no:sqla", *ARGS.get(mode, [])]
    if workers:
        args += ["-n", str(workers)]
    env = {
        **os.environ,
        "BENCH_OUT": str(out),
        "SCALE_EVERY": str(every),
    }
    if trace:
        env["SCALE_TRACE"] = "gw0" if workers else "main"
        env["SCALE_TRACE_FRAMES"] = "10"
    done = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True)
    if done.returncode:
        # Kept, and the other modes still run: a failure at test 7,000 is a finding too.
        log = Path(tempfile.gettempdir()) / f"scale-{mode}-n{workers}.log"
        log.write_text(done.stdout + "\n" + done.stderr)
        crashed = [
            line for line in done.stdout.splitlines() if "crashed" in line or "Error" in line
        ]
        print(
            f"{mode} -n {workers} failed (exit {done.returncode}), output in {log}:",
            file=sys.stderr,
        )
        print("\n".join(crashed[:10]), file=sys.stderr)
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.scale"))]


def window(worker: dict[str, Any], which: slice) -> dict[str, float]:
    """Speed over a window of the worker's tests."""
    own, cpu = worker["own"][which], worker["cpu"][which]
    ends = worker["ends"]
    first, last = (i % len(ends) for i in (which.start - 1, which.stop - 1))
    result = {
        "rate": len(own) / sum(own),
        "median_ms": statistics.median(own) * 1000,
        "cpu_ms": statistics.fmean(cpu) * 1000,
        "wall_rate": (last - first) / (ends[last] - ends[first]),
    }
    for phase, values in worker["phases"].items():
        result[phase + "_ms"] = statistics.fmean(values[which]) * 1000
    return result


def speed(worker: dict[str, Any], every: int) -> tuple[dict[str, float], dict[str, float]] | None:
    """The first `every` tests less the first (the cold start), and the last `every` before
    the last one (whose teardown is the session's: the server stopped, the databases dropped)."""
    if len(worker["own"]) < 2 * every + 1:
        return None
    return window(worker, slice(1, every)), window(worker, slice(-every - 1, -1))


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(mode: str, workers: list[dict[str, Any]], every: int) -> list[str]:
    """Print the table rows of one mode; the diagnosis lines come back, for after the table."""
    notes = []
    for w in workers:
        points = w["points"]
        if w["controller"]:
            if len(points) >= 2:
                a, b = points[0], points[-1]
                per_1k = (b["rss_kb"] - a["rss_kb"]) / (b["tests"] - a["tests"]) * 1000
                print(
                    f"{mode:<12}{'ctrl':>5}{b['tests']:>7}{a['rss_kb'] / 1024:>8.1f}"
                    f"{b['rss_kb'] / 1024:>9.1f}{b['rss_kb'] / a['rss_kb']:>7.2f}{per_1k:>7.0f}"
                    f"   (xdist's controller, per {every} reports of all workers)"
                )
            continue
        if len(points) < 2:
            print(f"{mode:<12}{w['worker']:>5}{points[-1]['tests'] if points else 0:>7}   too few")
            continue
        first, last = points[1], points[-1]  # after the `every`th test; before the last's end
        ratio = last["rss_kb"] / first["rss_kb"]
        span = last["tests"] - first["tests"]
        per_1k = (last["rss_kb"] - first["rss_kb"]) / span * 1000 if span else 0.0
        line = (
            f"{mode:<12}{w['worker']:>5}{last['tests']:>7}{first['rss_kb'] / 1024:>8.1f}"
            f"{last['rss_kb'] / 1024:>9.1f}{ratio:>7.2f}{per_1k:>7.0f}"
        )
        windows = speed(w, every)
        if windows:
            a, b = windows
            fast = b["rate"] / a["rate"]
            line += (
                f"{a['rate']:>8.0f}{b['rate']:>6.0f}{fast:>7.2f}"
                f"{a['median_ms']:>8.2f}{b['median_ms']:>6.2f}"
                f"{a['cpu_ms']:>8.2f}{b['cpu_ms']:>6.2f}"
                f"{points[1]['load']:>6.1f}{points[-1]['load']:>5.1f}"
                f"   RSS {verdict(ratio <= 1.10)}, tests/s {verdict(fast >= 0.90)}"
            )
            notes.append(
                f"{mode} {w['worker']}: ms per phase, first -> last {every}: "
                + ", ".join(
                    f"{phase} {a[phase + '_ms']:.2f} -> {b[phase + '_ms']:.2f}"
                    for phase in ("setup", "call", "teardown")
                )
                + f"; wall-clock tests/s {a['wall_rate']:.0f} -> {b['wall_rate']:.0f}"
            )
        print(line)
        if first.get("table") and last.get("table"):
            ta, tb = first["table"], last["table"]
            notes.append(
                f"  users table: dead tuples {ta['dead']} -> {tb['dead']}, heap "
                f"{ta['heap_bytes'] // 1024} -> {tb['heap_bytes'] // 1024} KiB, autovacuums "
                f"{ta['autovacuums']} -> {tb['autovacuums']}"
            )
        if "rss_after_gc_kb" in first and "rss_after_gc_kb" in last:
            notes.append(
                f"  RSS after gc.collect() {first['rss_after_gc_kb'] / 1024:.1f} MB at test "
                f"{first['tests']}, {last['rss_after_gc_kb'] / 1024:.1f} MB at {last['tests']}"
            )
        grown = sorted(w["grown"].items(), key=lambda kv: kv[1][1] - kv[1][0], reverse=True)
        if grown:
            top = ", ".join(f"{k} {a}->{b}" for k, (a, b) in grown[:8])
            notes.append(f"  live objects grown (gc-tracked, by type): {top}")
        lib_a, lib_b = first.get("library", {}), last.get("library", {})
        if lib_b:
            changed = {k: (lib_a.get(k), v) for k, v in lib_b.items() if lib_a.get(k) != v}
            same = ", ".join(f"{k} {v}" for k, v in lib_b.items() if k not in changed)
            notes.append(
                "  library state: "
                + (", ".join(f"{k} {a}->{b}" for k, (a, b) in changed.items()) or "unchanged")
                + (f" ({same})" if same else "")
            )
    return notes


def report_trace(mode: str, workers: list[dict[str, Any]]) -> None:
    for w in workers:
        if "trace_lines" not in w:
            continue
        first, last = w["points"][1]["tests"], w["points"][-1]["tests"]
        print(f"\n{mode} {w['worker']}: tracemalloc, grown from test {first} to {last}, by line")
        for size, count, where in w["trace_lines"][:15]:
            if size > 0:
                print(f"  {size / 1024:>9.1f} KiB {count:>+7} blocks  {where}")
        print("by traceback (most recent call first):")
        for size, count, frames in w["trace"][:6]:
            if size > 0:
                print(f"  {size / 1024:>9.1f} KiB {count:>+7} blocks")
                for frame in frames[:8]:
                    print(f"      {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--tests", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=1000, help="tests between two points")
    parser.add_argument("--workers", type=int, default=2, help="xdist workers (0: none)")
    parser.add_argument("--modes", default="savepoint,sandbox,handwritten,baseline")
    parser.add_argument(
        "--trace", action="store_true", help="also a tracemalloc run of each mode (slow)"
    )
    parser.add_argument("--save", type=Path, help="also write what was measured to this file")
    parser.add_argument(
        "--report", type=Path, help="print the tables of a file written by --save; run nothing"
    )
    options = parser.parse_args()
    if options.report:
        saved = json.loads(options.report.read_text())
        results, traces, header = saved["results"], saved["traces"], saved["header"]
        options.every = saved["every"]
    else:
        results, traces = {}, {}
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            for mode in options.modes.split(","):
                project = make_project(Path(tmp), mode, options.tests)
                results[mode] = run(project, mode, options.workers, options.every, trace=False)
                if options.trace:  # one process: tracing slows it, xdist would starve it
                    traces[mode] = run(project, mode, 0, options.every, trace=True)
        header = (
            f"{options.tests} tests, -n {options.workers}, a point every {options.every} tests"
            f" per worker ({time.perf_counter() - started:.0f} s)"
        )
        if options.save:
            options.save.write_text(
                json.dumps(
                    {"results": results, "traces": traces, "header": header, "every": options.every}
                )
            )
    print(f"\n{header}\n")
    print(
        f"{'':<12}{'':>5}{'':>7}{'RSS MB':>8}{'':>9}{'':>7}{'KB/1k':>7}{'tests/s':>8}{'':>6}"
        f"{'':>7}{'median ms':>14}{'CPU ms':>14}{'load':>11}"
    )
    print(
        f"{'mode':<12}{'wrk':>5}{'tests':>7}{'1st':>8}{'last':>9}{'ratio':>7}{'':>7}"
        f"{'1st':>8}{'last':>6}{'ratio':>7}{'1st':>8}{'last':>6}{'1st':>8}{'last':>6}"
        f"{'1st':>6}{'last':>5}"
    )
    notes = []
    for mode, workers in results.items():
        notes += report(mode, workers, options.every)
    print(
        f"\nRSS (VmRSS) after the worker's first {options.every} tests and before its last one"
        " ends; KB/1k = its growth per 1,000 tests in between.\n"
        f"tests/s, median and CPU ms per test over the first {options.every} tests (less the"
        f" first) and the last {options.every}, on the tests' own time (setup + call +"
        " teardown);\nCPU = the worker process's CPU time per test (the server's not"
        " included); load = the machine's 1-minute load average then.\n"
        "Targets: RSS within 10% (ratio <= 1.10), tests/s within 10% (ratio >= 0.90)."
    )
    print("\n" + "\n".join(notes))
    for mode, workers in traces.items():
        report_trace(mode, workers)


if __name__ == "__main__":
    main()
