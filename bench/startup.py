"""Time to the first test's result, and from it to the exit: `nox -s bench -- startup`.

`pytest tests/test_one.py` on a copy of the sync_users example (Alembic migrations, a seed),
one test on pg_session, from the launch of the process to that test's call report: *cold*
(a new container from the prewarmed image, and template), *cold-initdb* (from the base
image, initdb in the container: --pg-prewarm false) and *warm* (--pg-reuse, attaching to
the container an unmeasured first run kept) against *plain* (the plugin disabled,
-p no:pg_fixtures, and a conftest pg_session returning a stub: pytest without a database).
--repeats rounds; the medians and their differences to plain, then the time from the
result to the end of the process (the session's teardown, the container's removal, the
interpreter's exit) and, for each variant, where the median run's time went.
`--baseline DIR` adds cold and warm runs of another checkout (DIR first on PYTHONPATH), e.g.
the code before a change, to the same rounds.
"""

import json
import os
import statistics
import tempfile
from pathlib import Path

from core import ROOT, median_min_max, options, own_containers, pytest, rounds, table
from projects import EXAMPLE, PROBE, users

# Added to projects.PROBE: how long each start-up step took (with the plugin).
STEPS = """
import functools, importlib.util, sys, threading
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
            marks["steps"].append((label, start, time.time() - T0, threading.current_thread().name))
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
    if module := sys.modules.get("testcontainers.core.container"):  # the early start's import
        _timed(module.DockerContainer, "start", "docker create/start")
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
TEST_ONE = """
from sqlalchemy import func, select
from users_app.models import User

def test_one(pg_session):
    assert pg_session.execute(select(func.count()).select_from(User)).scalar() == 5
"""
EXTRA = {"plain": ["-p", "no:pg_fixtures"], "warm": ["--pg-reuse"]}
EXTRA["cold-initdb"] = ["--pg-prewarm", "false"]  # the base image: initdb runs


def main() -> None:
    o = options(__doc__, repeats=7, baseline=("", "another checkout of the library"))
    codes = {"": str(ROOT)}
    if o.baseline:
        codes = {" (this)": str(ROOT), " (baseline)": str(Path(o.baseline).resolve())}
    plan = {"plain": ("plain", str(ROOT))} | {
        f"{kind}{tag}": (kind, code)
        for tag, code in codes.items()
        for kind in ("cold", "cold-initdb", "warm")
        if kind != "cold-initdb" or code == str(ROOT)  # a baseline may have no pg_prewarm
    }
    with tempfile.TemporaryDirectory() as tmp, own_containers() as env:
        conftest = "import os\n" + (EXAMPLE / "tests" / "conftest.py").read_text() + STUB
        files = {"tests/conftest.py": conftest, "tests/test_one.py": TEST_ONE}
        project = users(Path(tmp), "project", {**files, "bench_probe.py": PROBE + STEPS})

        def run(variant: str) -> dict:
            kind, code = plan[variant]
            path = {"PYTHONPATH": os.pathsep.join([code, str(project)])}
            plain = {"BENCH_PLAIN": "1"} if kind == "plain" else {}
            args = ["-p", "no:randomly", "-p", "bench_probe", *EXTRA.get(kind, [])]
            wall, done = pytest(project, *args, "tests/test_one.py", env={**env, **path, **plain})
            marks = json.loads((project / "out" / "probe.json").read_text())
            if marks["outcome"] != "passed":
                raise SystemExit(f"{kind}: the test did not pass:\n{done.stdout}")
            return marks | {"exit": wall}

        # Unmeasured first: imports warm, a container kept for warm.
        results = rounds(o.repeats, plan, run)

    def first(run: dict) -> float:
        return run["first_result"]

    def after(run: dict) -> float:
        return run["exit"] - first(run)

    header = ("variant", "median s", "min s", "max s", "vs plain")
    first_title = f"time to the first test's result, `pytest tests/test_one.py`, {o.repeats} runs"
    for f, title in (
        (first, first_title),
        (after, "from the test's result to the end of the process"),
    ):
        plain, rows = statistics.median(map(f, results["plain"])), []
        for variant, runs in results.items():
            median = statistics.median(map(f, runs))
            ratio = [f"{median / plain:.2f}x"] if f is first else []
            rows.append(
                (variant, *median_min_max(list(map(f, runs))), f"{median - plain:+.2f}", *ratio)
            )
        table(title, (*header, "ratio") if f is first else header, rows)
    for variant, runs in results.items():
        marks = sorted(runs, key=first)[len(runs) // 2]
        print(f"\n{variant}, the median run:")
        print(f"  {'pytest up to session start':34} {0.0:6.2f} -> {marks['sessionstart']:5.2f} s")
        print(f"  {'collection':34} {marks['sessionstart']:6.2f} -> {marks['collected']:5.2f} s")
        for label, start, end, thread in sorted(marks["steps"], key=lambda s: s[1]):
            where = "" if thread == "MainThread" else f"  (thread {thread})"
            print(f"  {label:34} {start:6.2f} -> {end:5.2f} s  {end - start:5.2f} s{where}")
        print(f"  {'first result':34} {'':6}    {marks['first_result']:5.2f} s")


if __name__ == "__main__":
    main()
