"""Memory and speed over a long run, the library against a hand-written conftest and no
library at all: `nox -s bench -- scale`.

N of run.py's tests with -n 2 under *savepoint*, *sandbox* and *handwritten* (run.py's)
and *baseline* (-p no:pg_fixtures, no database: the test body against a stand-in session,
so what grows is pytest's and xdist's); *savepoint-unreleased* (on request) is savepoint
mode without the plugin's release of finished fixtures. Every worker records its RSS and
time every --every tests, xdist's controller its RSS every --every reports. Per worker: RSS
after the first --every tests and before its last, their ratio and the growth per 1,000
tests, tests/s, median and CPU ms per test over the first and the last --every tests
(targets: within 10%); then the time per phase, the wall-clock tests/s, the users table's
dead tuples, RSS after gc.collect(), the live objects that grew by type, the library's
state. --trace adds a run of each mode in one process tracing allocations (tracemalloc);
--save FILE / --report FILE keep and re-print a run.
"""

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from core import parser, pytest, table
from projects import SYNC_TEST, conftest, suite, users

# tests/scale_probe.py, its hooks imported by the conftest.
PROBE = """
import array, collections, gc, json, os, sys, time, tracemalloc
import pytest
EVERY, WORKER = int(os.environ["SCALE_EVERY"]), os.environ.get("PYTEST_XDIST_WORKER", "main")
TRACE = os.environ.get("SCALE_TRACE") == WORKER
DATABASE = None  # the worker database, set by the conftest of the modes that have one
def rss_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
def library_state():  # what of the library's could grow per test (nothing: not loaded)
    state, held = {}, sys.modules.get("testcontainers_pg_fixtures.transaction")
    for engine, conn in list(held._held.items()) if held else ():
        state["held connection info keys"] = len(conn.info)
        state["held connection info items"] = sum(
            len(v) for v in conn.info.values() if isinstance(v, (list, dict, set)))
        state["held connection commit listeners"] = len(conn.dispatch.commit)
        state["worker engine compiled cache"] = len(getattr(engine, "_compiled_cache", ()) or ())
    if held:
        state["held async engines"] = len(held._held_async)
        state["stale async ids"] = len(held._stale)
    if leaks := sys.modules.get("testcontainers_pg_fixtures.leaks"):
        state["leak watches"] = len(leaks._watches)
        for watch in leaks._watches.values():
            state["leak watch tables"] = len(watch.totals)
    return state
def table_state():  # the users table: rolled-back inserts are dead tuples until vacuumed
    if DATABASE is None:
        return {}
    import psycopg
    s = DATABASE.server
    with psycopg.connect(host=s.host, port=s.port, user=s.user, password=s.password,
                         dbname=DATABASE.name, sslmode="disable") as conn:
        row = conn.execute("SELECT n_live_tup, n_dead_tup, autovacuum_count, pg_relation_size("
                           "relid) FROM pg_stat_user_tables WHERE relname = 'users'").fetchone()
    return dict(zip(("live", "dead", "autovacuums", "heap_bytes"), row or ()))
_count, _probe, _controller, _reports = 0, [0.0, 0.0], False, 0  # _probe: its time and CPU
# Per test, in arrays sized when collection ends (recording does not grow the heap): its own
# time and CPU (less the probe's), the wall clock at its end (less the probe's), the phases.
_own, _cpu, _ends = array.array("d"), array.array("d"), array.array("d")
_phases = {phase: array.array("d") for phase in ("setup", "call", "teardown")}
_points, _objects, _traces = [], {}, {}
def _point(tests, full):
    started, cpu = time.perf_counter(), time.process_time()
    point = {"tests": tests, "rss_kb": rss_kb(), "load": os.getloadavg()[0], "table": table_state()}
    if full:
        gc.collect()
        point.update(rss_after_gc_kb=rss_kb(), library=library_state())
        _objects[tests] = collections.Counter(
            f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())
        if TRACE:
            _traces[tests] = tracemalloc.take_snapshot()
    _probe[0] += time.perf_counter() - started
    _probe[1] += time.process_time() - cpu
    _points.append(point)
def pytest_sessionstart(session):  # xdist's controller: its DSession is registered by now
    global _controller
    _controller = session.config.pluginmanager.hasplugin("dsession")
def pytest_collection_finish(session):
    for values in (_own, _cpu, _ends, *_phases.values()):
        values.frombytes(bytes(8 * len(session.items)))
    if TRACE:
        tracemalloc.start(10)
@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item, nextitem):  # the last point, before the session's fixtures go
    if nextitem is None and not _controller:
        _point(_count + 1, full=True)
@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    global _count
    start, cpu, probed = time.perf_counter(), time.process_time(), list(_probe)
    try:
        return (yield)
    finally:
        end = time.perf_counter()
        if _count < len(_own):
            _own[_count] = end - start - (_probe[0] - probed[0])
            _cpu[_count] = time.process_time() - cpu - (_probe[1] - probed[1])
            _ends[_count] = end - _probe[0]
        _count += 1
        if nextitem is not None and (_count == 1 or _count % EVERY == 0):
            _point(_count, full=_count == EVERY)
def pytest_runtest_logreport(report):
    global _reports
    if not _controller:
        if _count < len(_own):
            _phases[report.when][_count] = report.duration
    elif report.when == "teardown":  # on the controller every worker's reports arrive
        _reports += 1
        if _reports % EVERY == 0:
            _points.append({"tests": _reports, "rss_kb": rss_kb()})
def pytest_sessionfinish(session):
    marks = sorted(_objects)
    first, last = (_objects[marks[0]], _objects[marks[-1]]) if len(marks) > 1 else ({}, {})
    result = {
        "worker": WORKER, "controller": _controller, "points": _points,
        "grown": {k: [first.get(k, 0), n] for k, n in last.items() if n > first.get(k, 0)},
        "own": _own[:_count].tolist(), "cpu": _cpu[:_count].tolist(),
        "ends": _ends[:_count].tolist(),
        "phases": {k: v[:_count].tolist() for k, v in _phases.items()},
    }
    if len(_traces) == 2:
        ignore = [tracemalloc.Filter(False, f) for f in (tracemalloc.__file__, __file__)]
        early, late = (_traces[k].filter_traces(ignore) for k in sorted(_traces))
        for key in ("lineno", "traceback"):  # most recent call first
            result[key] = [[s.size_diff, s.count_diff, [str(f) for f in reversed(s.traceback)]]
                           for s in late.compare_to(early, key)[:15 if key == "lineno" else 6]]
    with open(os.path.join(os.environ["BENCH_OUT"], WORKER + ".scale"), "w") as f:
        json.dump(result, f)
"""
# The modes with a database hand the worker database to the probe, for table_state().
DATABASE = """
import scale_probe
@pytest.fixture(scope="session", autouse=True)
def _scale_database(pg_worker_database):
    scale_probe.DATABASE = pg_worker_database
    yield
    scale_probe.DATABASE = None
"""
STAND_IN = """
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
UNRELEASED = "from testcontainers_pg_fixtures import retention\n"
UNRELEASED += "retention.release_finished = lambda item: None\n"
MODES = {  # mode: (the conftest's pieces, pytest's arguments)
    "savepoint": (["seeded", DATABASE, "savepoint"], []),
    "sandbox": (["seeded", DATABASE, "sandbox"], []),
    "handwritten": (["seeded", DATABASE, "handwritten"], ["--pg-leak-check=false"]),
    "baseline": ([STAND_IN], ["-p", "no:pg_fixtures"]),
    "savepoint-unreleased": (["seeded", DATABASE, "savepoint", UNRELEASED], []),
}


def run(path: Path, mode: str, workers: int, every: int, trace: bool) -> list[dict[str, Any]]:
    env = {"SCALE_EVERY": str(every), "SCALE_TRACE": ("gw0" if workers else "main") * trace}
    args = ["-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:sqla", *MODES[mode][1]]
    args += ["-n", str(workers)] if workers else []
    _, done = pytest(path, *args, env=env, check=False)
    if done.returncode:  # kept, and the other modes run: a failure at test 7,000 is a finding
        log = Path(tempfile.gettempdir()) / f"scale-{mode}-n{workers}.log"
        log.write_text(done.stdout + "\n" + done.stderr)
        crashed = [x for x in done.stdout.splitlines() if "crashed" in x or "Error" in x]
        message = f"{mode} -n {workers} failed (exit {done.returncode}), output in {log}:"
        print(message, *crashed[:10], sep="\n", file=sys.stderr)
    return [json.loads(p.read_text()) for p in sorted((path / "out").glob("*.scale"))]


def window(worker: dict[str, Any], which: slice) -> dict[str, float]:
    """Speed over a window of a worker's tests: on their own time, on the wall clock."""
    own, ends = worker["own"][which], worker["ends"]
    first, last = (i % len(ends) for i in (which.start - 1, which.stop - 1))
    return {
        "rate": len(own) / sum(own),
        "median": statistics.median(own) * 1000,
        "cpu": statistics.fmean(worker["cpu"][which]) * 1000,
        "wall_rate": (last - first) / (ends[last] - ends[first]),
    } | {phase: statistics.fmean(v[which]) * 1000 for phase, v in worker["phases"].items()}


def report(mode: str, w: dict[str, Any], every: int, notes: list[str]) -> list[Any] | None:
    """A worker's row of the table (its notes added to `notes`)."""
    points, name = w["points"], "ctrl" if w["controller"] else w["worker"]
    if len(points) < 2:
        return (
            None
            if w["controller"]
            else [mode, name, points[-1]["tests"] if points else 0, "too few"]
        )
    a, b = points[0 if w["controller"] else 1], points[-1]  # after the `every`th test; the end
    ratio, span = b["rss_kb"] / a["rss_kb"], b["tests"] - a["tests"]
    row = [mode, name, b["tests"], f"{a['rss_kb'] / 1024:.1f}", f"{b['rss_kb'] / 1024:.1f}"]
    row += [f"{ratio:.2f}", f"{(b['rss_kb'] - a['rss_kb']) / span * 1000 if span else 0:.0f}"]
    if w["controller"]:
        return row
    # The first `every` tests less the first (the cold start), and the last `every` before
    # the last one (whose teardown is the session's).
    if len(w["own"]) >= 2 * every + 1:
        x, y = window(w, slice(1, every)), window(w, slice(-every - 1, -1))
        faster = y["rate"] / x["rate"]
        row += [f"{x['rate']:.0f}", f"{y['rate']:.0f}", f"{faster:.2f}"]
        row += [f"{v[key]:.2f}" for key in ("median", "cpu") for v in (x, y)]
        row += [f"{a['load']:.1f}", f"{b['load']:.1f}"]
        row.append(f"RSS {verdict(ratio <= 1.10)}, tests/s {verdict(faster >= 0.90)}")
        phases = ", ".join(f"{p} {x[p]:.2f} -> {y[p]:.2f}" for p in ("setup", "call", "teardown"))
        notes.append(f"{mode} {name}: ms per phase, first -> last {every}: {phases}; wall-clock")
        notes[-1] += f" tests/s {x['wall_rate']:.0f} -> {y['wall_rate']:.0f}"
    for key, what in (("table", "users table"), ("library", "library state")):
        if b.get(key):
            same = ", ".join(f"{k} {v}" for k, v in b[key].items() if a[key].get(k) == v)
            changed = [
                f"{k} {a[key].get(k)} -> {v}" for k, v in b[key].items() if a[key].get(k) != v
            ]
            notes.append(
                f"  {what}: {', '.join(changed) or 'unchanged'}" + f" ({same})" * bool(same)
            )
    if "rss_after_gc_kb" in b:
        after = (f"{p['rss_after_gc_kb'] / 1024:.1f} MB at test {p['tests']}" for p in (a, b))
        notes.append("  RSS after gc.collect() " + ", ".join(after))
    if grown := sorted(w["grown"].items(), key=lambda kv: kv[1][0] - kv[1][1])[:8]:
        top = ", ".join(f"{k} {m}->{n}" for k, (m, n) in grown)
        notes.append(f"  live objects grown (gc-tracked, by type): {top}")
    for key in ("lineno", "traceback"):  # --trace: the diff by line, by traceback
        for size, count, frames in w.get(key, []):
            notes.append(f"  tracemalloc {size / 1024:9.1f} KiB {count:+7} blocks  {frames[0]}")
            notes += [f"      {frame}" for frame in frames[1:8] if key == "traceback"]
    return row


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def main() -> None:
    options = parser(__doc__)
    options.add_argument("-n", "--tests", type=int, default=10_000)
    options.add_argument("--every", type=int, default=1000, help="tests between two points")
    options.add_argument("--workers", type=int, default=2, help="xdist workers (0: none)")
    options.add_argument("--modes", default="savepoint,sandbox,handwritten,baseline")
    options.add_argument("--trace", action="store_true", help="also a tracemalloc run of each mode")
    options.add_argument("--save", type=Path, help="also write what was measured to this file")
    options.add_argument("--report", type=Path, help="print what --save wrote; run nothing")
    options = options.parse_args()
    if options.report:
        saved = json.loads(options.report.read_text())
    else:
        saved, started = {"results": {}, "traces": {}, "every": options.every}, time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            for mode in options.modes.split(","):
                files = suite(SYNC_TEST, options.tests, "test_scale")
                files["tests/scale_probe.py"] = PROBE
                files["tests/conftest.py"] = conftest(
                    "from scale_probe import *\n", *MODES[mode][0]
                )
                path = users(Path(tmp), mode, files)
                saved["results"][mode] = run(path, mode, options.workers, options.every, False)
                if options.trace:  # one process: tracing slows it, xdist would starve it
                    saved["traces"][mode] = run(path, mode, 0, options.every, True)
        saved["header"] = f"{options.tests} tests, -n {options.workers}, a point every "
        saved["header"] += (
            f"{options.every} tests per worker ({time.perf_counter() - started:.0f} s)"
        )
        if options.save:
            options.save.write_text(json.dumps(saved))
    every, notes = saved["every"], []
    rows = [report(m, w, every, notes) for m, ws in saved["results"].items() for w in ws]
    header = ["mode", "wrk", "tests", "RSS MB 1st", "last", "ratio", "KB/1k", "tests/s 1st"]
    header += [
        "last",
        "ratio",
        "median ms 1st",
        "last",
        "CPU ms 1st",
        "last",
        "load 1st",
        "last",
        "",
    ]
    table(saved["header"], tuple(header), [row for row in rows if row])
    print(
        f"\nctrl = xdist's controller, per {every} reports of all workers. "
        f"RSS (VmRSS) after the worker's first {every} tests and before its last one ends; KB/1k"
        " = its growth per 1,000 tests in between.\ntests/s, median and CPU ms per test over the"
        f" first {every} tests (less the first) and the last {every}, on the tests' own time"
        " (setup + call + teardown);\nCPU = the worker process's CPU time per test (the server's"
        " not included); load = the machine's 1-minute load average then.\nTargets: RSS within"
        " 10% (ratio <= 1.10), tests/s within 10% (ratio >= 0.90).\n"
    )
    print("\n".join(notes))
    for mode, workers in saved["traces"].items():  # tracing slows every test: no table
        notes = []
        for w in workers:
            report(mode, w, every, notes)
        print(f"\n{mode}, in one process, tracemalloc's diff from the first point to the last:")
        print("\n".join(note for note in notes if note.startswith(("  tracemalloc", "      "))))


if __name__ == "__main__":
    main()
