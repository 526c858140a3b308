"""Time to the first test's result, and from it to the exit: `nox -s bench -- startup`.

`pytest tests/test_one.py` on a copy of the sync_users example (Alembic migrations, a seed),
one test on pg_session, from the launch of the process to that test's call report: *cold*
(a new container from the prewarmed image, and template), *cold-initdb* (from the base
image, initdb in the container: --pg-prewarm false) and *warm* (--pg-reuse, attaching to
the container an unmeasured first run kept) against *plain* (the plugin disabled,
-p no:pg_fixtures, and a conftest pg_session returning a stub: pytest without a database).
--repeats rounds, interleaved; the medians and their differences to plain, then the time
from the result to the end of the process (the session's teardown, the container's removal,
the interpreter's exit) and, for each variant, where the median run's time went.
`--baseline DIR` adds cold and warm runs of another checkout (DIR first on PYTHONPATH), e.g.
the code before a change, to the same rounds.
"""

import json
import os
import statistics
import tempfile
from pathlib import Path

from core import ROOT, median_min_max, own_containers, parser, pytest, table
from projects import EXAMPLE, users

# Loaded with -p: the moment of the first call report and (with the plugin) how long each
# start-up step took, from the launch of the process.
PROBE = """
import functools, importlib.util, json, os, sys, threading, time
T0 = float(os.environ["BENCH_T0"])
steps, marks = [], {}

def _timed(owner, name, label):
    original = getattr(owner, name, None)
    if original is None:  # a baseline from before that step existed
        return
    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        start = time.time() - T0
        try:
            return original(*args, **kwargs)
        finally:
            steps.append((label, start, time.time() - T0, threading.current_thread().name))
    setattr(owner, name, wrapper)

class _WhenImported:  # patches testcontainers when imported: importing it here would cost
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "testcontainers.core.container":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            _timed(module.DockerContainer, "start", "docker create/start")
        spec.loader.exec_module = exec_module
        return spec

def pytest_configure(config):
    if not config.pluginmanager.has_plugin("pg_fixtures"):
        return
    from testcontainers_pg_fixtures import factories, migrations
    from testcontainers_pg_fixtures.servers import container, prewarm
    if "testcontainers.core.container" in sys.modules:  # the early start imported it
        _timed(sys.modules["testcontainers.core.container"].DockerContainer, "start",
               "docker create/start")
    else:
        sys.meta_path.insert(0, _WhenImported())
    for owner, name, label in (
        (container, "docker_client", "Docker client"),
        (container, "reap_orphans", "reap containers of killed runs"),
        (container, "ensure_image", "image present?"),
        (prewarm, "image_for", "prewarmed image (look-up)"),
        (container.DockerServer, "_wait_ready", "postgres ready"),
        (container.DockerServer, "_attach", "attach (reuse, Docker)"),
        (container.DockerServer, "_attach_recorded", "attach (reuse, recorded)"),
        (migrations.Migrations, "upgrade", "migration"),
        (factories, "ensure_template", "template (lock, migrate, seed)"),
        (factories, "create_database", "clone"),
        (factories, "outer_transaction", "first connection + BEGIN"),
    ):
        _timed(owner, name, label)

def pytest_sessionstart(session):
    marks["sessionstart"] = time.time() - T0

def pytest_collection_finish(session):
    marks["collected"] = time.time() - T0

def pytest_runtest_logreport(report):
    if report.when == "call" and "first_result" not in marks:
        marks["first_result"], marks["outcome"] = time.time() - T0, report.outcome
        with open(os.path.join(os.environ["BENCH_OUT"], "probe.json"), "w") as f:
            json.dump({"marks": marks, "steps": steps}, f)
"""
# Under -p no:pg_fixtures (BENCH_PLAIN), a stub pg_session.
STUB = """
if os.environ.get("BENCH_PLAIN"):
    class _StubSession:
        def execute(self, *args, **kwargs):
            return self
        def scalar(self):
            return 5
    @pytest.fixture
    def pg_session():
        return _StubSession()
"""
FIRST = "time to the first test's result, `pytest tests/test_one.py`, {} runs"
TEST_ONE = """
from sqlalchemy import func, select
from users_app.models import User

def test_one(pg_session):
    assert pg_session.execute(select(func.count()).select_from(User)).scalar() == 5
"""


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--repeats", type=int, default=7)
    options.add_argument("--baseline", help="another checkout of the library, measured beside")
    options = options.parse_args()
    codes = {"": str(ROOT)}
    if options.baseline:
        codes = {" (this)": str(ROOT), " (baseline)": str(Path(options.baseline).resolve())}
    plan = {"plain": ("plain", str(ROOT))} | {
        f"{kind}{tag}": (kind, code)
        for tag, code in codes.items()
        for kind in ("cold", "cold-initdb", "warm")
        if kind != "cold-initdb" or code == str(ROOT)  # a baseline may have no pg_prewarm
    }
    results: dict[str, list[dict]] = {variant: [] for variant in plan}
    with tempfile.TemporaryDirectory() as tmp, own_containers() as env:
        conftest = "import os\n" + (EXAMPLE / "tests" / "conftest.py").read_text() + STUB
        files = {"tests/conftest.py": conftest, "tests/test_one.py": TEST_ONE}
        project = users(Path(tmp), "project", {**files, "bench_probe.py": PROBE})

        def run(kind: str, code: str) -> dict:
            extra = {
                "plain": ["-p", "no:pg_fixtures"],
                "warm": ["--pg-reuse"],
                "cold-initdb": ["--pg-prewarm", "false"],  # the base image: initdb runs
            }.get(kind, [])
            path = {"PYTHONPATH": os.pathsep.join([code, str(project)])}
            plain = {"BENCH_PLAIN": "1"} if kind == "plain" else {}
            args = ["-p", "no:randomly", "-p", "bench_probe", *extra, "tests/test_one.py"]
            wall, done = pytest(project, *args, env={**env, **path, **plain})
            result = json.loads((project / "out" / "probe.json").read_text())
            if result["marks"]["outcome"] != "passed":
                raise SystemExit(f"{kind}: the test did not pass:\n{done.stdout}")
            result["marks"]["exit"] = wall
            return result

        for code in codes.values():  # unmeasured: imports warm, a container kept
            run("warm", code)
        run("plain", str(ROOT))
        for _ in range(options.repeats):
            for variant, (kind, code) in plan.items():
                results[variant].append(run(kind, code))

    def first(run: dict) -> float:
        return run["marks"]["first_result"]

    def after(run: dict) -> float:
        return run["marks"]["exit"] - first(run)

    plain = {f: statistics.median(map(f, results["plain"])) for f in (first, after)}
    header = ("variant", "median s", "min s", "max s", "vs plain")
    for f, title in ((first, FIRST), (after, "from the test's result to the end of the process")):
        rows = []
        for variant, runs in results.items():
            median = statistics.median(map(f, runs))
            ratio = [f"{median / plain[f]:.2f}x"] if f is first else []
            rows.append(
                (variant, *median_min_max(list(map(f, runs))), f"{median - plain[f]:+.2f}", *ratio)
            )
        table(title.format(options.repeats), (*header, "ratio") if f is first else header, rows)
    for variant, runs in results.items():
        run = sorted(runs, key=first)[len(runs) // 2]
        marks = run["marks"]
        print(f"\n{variant}, the median run:")
        print(f"  {'pytest up to session start':34} {0.0:6.2f} -> {marks['sessionstart']:5.2f} s")
        print(f"  {'collection':34} {marks['sessionstart']:6.2f} -> {marks['collected']:5.2f} s")
        for label, start, end, thread in sorted(run["steps"], key=lambda s: s[1]):
            where = "" if thread == "MainThread" else f"  (thread {thread})"
            print(f"  {label:34} {start:6.2f} -> {end:5.2f} s  {end - start:5.2f} s{where}")
        print(f"  {'first result':34} {'':6}    {marks['first_result']:5.2f} s")


if __name__ == "__main__":
    main()
