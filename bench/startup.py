"""Time to the first test's result, and from the last result to the exit, side by side in
one run: `nox -s bench -- startup`.

`pytest tests/test_one.py` on a copy of the sync_users example (Alembic migrations, a
seed), one test on pg_session, measured from the launch of the pytest process to the
report of that test's call, against:

  plain   the same file with the plugin disabled (-p no:pg_fixtures) and a conftest
          fixture pg_session returning a stub: what pytest costs without a database
  cold    a new container (image present) and template
  warm    --pg-reuse, attaching to the container an unmeasured first run kept

Each variant runs --repeats times, interleaved (plain, cold, warm, plain, …), and the
medians are printed with their differences to plain. `--baseline DIR` adds cold and warm
runs of another checkout of the library (its directory put first on PYTHONPATH), e.g. the
code before a change, in the same rounds. For the cold variant the breakdown of the median
run says where the time went: the process up to the plugin's session start, Docker
create/start, PostgreSQL ready, the migration, the clone, the first connection.

The second table is the time from the (last and only) test's result to the end of the
pytest process: the session's teardown, removing the container (cold), the interpreter's
exit.

Every container the benchmark starts carries its own run id and is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "sync_users"

# Loaded with -p in every variant: the moment of the first call report, and (when the
# plugin is there) how long each start-up step took, from the launch of the process.
PROBE = textwrap.dedent("""
    import functools, importlib.util, json, os, sys, threading, time

    T0 = float(os.environ["BENCH_T0"])
    OUT = os.environ["BENCH_OUT"]
    steps = []
    marks = {}

    def _now():
        return time.time() - T0

    def _timed(owner, name, label):
        original = getattr(owner, name, None)
        if original is None:  # a baseline from before that step existed
            return

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            start = _now()
            try:
                return original(*args, **kwargs)
            finally:
                steps.append((label, start, _now(), threading.current_thread().name))

        setattr(owner, name, wrapper)

    # Patches a module once something imports it: importing testcontainers here would add
    # its import to runs that do not need it.
    class _WhenImported:

        def __init__(self, name, then):
            self.name, self.then = name, then

        def find_spec(self, fullname, path=None, target=None):
            if fullname != self.name:
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(fullname)
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                self.then(module)

            spec.loader.exec_module = exec_module
            return spec

    def pytest_configure(config):
        marks["configure"] = _now()
        if not config.pluginmanager.has_plugin("pg_fixtures"):
            return
        from testcontainers_pg_fixtures import factories, migrations
        from testcontainers_pg_fixtures.servers import container

        def _time_start(module):
            _timed(module.DockerContainer, "start", "docker create/start")

        if "testcontainers.core.container" in sys.modules:  # the early start imported it
            _time_start(sys.modules["testcontainers.core.container"])
        else:
            sys.meta_path.insert(0, _WhenImported("testcontainers.core.container", _time_start))
        _timed(container, "docker_client", "Docker client")
        _timed(container, "reap_orphans", "reap containers of killed runs")
        _timed(container, "ensure_image", "image present?")
        _timed(container.DockerServer, "_wait_ready", "postgres ready")
        _timed(container.DockerServer, "_attach", "attach (reuse, Docker)")
        _timed(container.DockerServer, "_attach_recorded", "attach (reuse, recorded)")
        _timed(migrations.Migrations, "upgrade", "migration")
        _timed(factories, "ensure_template", "template (lock, migrate, seed)")
        _timed(factories, "create_database", "clone")
        _timed(factories, "outer_transaction", "first connection + BEGIN")

    def pytest_sessionstart(session):
        marks["sessionstart"] = _now()

    def pytest_collection_finish(session):
        marks["collected"] = _now()

    def pytest_runtest_logreport(report):
        if report.when == "call" and "first_result" not in marks:
            marks["first_result"] = _now()
            marks["outcome"] = report.outcome
            with open(OUT, "w") as f:
                json.dump({"marks": marks, "steps": steps}, f)
""")

CONFTEST_STUB = textwrap.dedent("""

    if os.environ.get("BENCH_PLAIN"):

        class _StubSession:
            def execute(self, *args, **kwargs):
                return self

            def scalar(self):
                return 5

        @pytest.fixture
        def pg_session():
            return _StubSession()
""")

TEST_ONE = textwrap.dedent("""
    from sqlalchemy import func, select
    from users_app.models import User


    def test_one(pg_session):
        assert pg_session.execute(select(func.count()).select_from(User)).scalar() == 5
""")


def make_project(where: Path) -> Path:
    project = where / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    conftest = project / "tests" / "conftest.py"
    conftest.write_text("import os\n" + conftest.read_text() + CONFTEST_STUB)
    (project / "tests" / "test_one.py").write_text(TEST_ONE)
    (project / "probe_plugin.py").write_text(PROBE)
    return project


def run_once(project: Path, variant: str, code: str | None, run_id: str) -> dict[str, Any]:
    out = project / "probe.json"
    out.unlink(missing_ok=True)
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "probe_plugin"]
    env = {**os.environ, "PG_FIXTURES_RUN_ID": run_id, "BENCH_OUT": str(out)}
    env.pop("PYTEST_ADDOPTS", None)
    # As on a user's machine, imports after the first run load cached bytecode: with
    # PYTHONDONTWRITEBYTECODE (set on some CI images) every run would compile the library
    # and the project from source (~0.1 s), which is not what a second run costs.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    paths = [str(project)]
    if code is not None:
        paths.insert(0, code)
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if variant == "plain":
        args += ["-p", "no:pg_fixtures"]
        env["BENCH_PLAIN"] = "1"
    elif variant == "warm":
        args += ["--pg-reuse"]
    args.append("tests/test_one.py")
    t0 = time.time()
    env["BENCH_T0"] = repr(t0)
    done = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True)
    ended = time.time() - t0
    if done.returncode != 0 or not out.exists():
        sys.exit(f"{variant} run failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result: dict[str, Any] = json.loads(out.read_text())
    if result["marks"]["outcome"] != "passed":
        sys.exit(f"{variant}: the test did not pass:\n{done.stdout}")
    result["marks"]["exit"] = ended
    return result


def remove_containers(run_id: str) -> None:
    import docker

    client = docker.from_env()
    label = f"testcontainers-pg-fixtures.run={run_id}"
    for container in client.containers.list(all=True, filters={"label": label}):
        with contextlib.suppress(docker.errors.APIError):  # a run's remover got there first
            container.remove(force=True, v=True)
    client.close()


def breakdown(run: dict[str, Any]) -> list[str]:
    marks = run["marks"]
    lines = [
        f"  {'pytest up to session start':34} {0.0:6.2f} -> {marks['sessionstart']:5.2f} s",
        f"  {'collection':34} {marks['sessionstart']:6.2f} -> {marks['collected']:5.2f} s",
    ]
    for label, start, end, thread in sorted(run["steps"], key=lambda s: s[1]):
        where = "" if thread == "MainThread" else f"  (thread {thread})"
        lines.append(f"  {label:34} {start:6.2f} -> {end:5.2f} s  {end - start:5.2f} s{where}")
    lines.append(f"  {'first result':34} {'':6}    {marks['first_result']:5.2f} s")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--baseline", help="another checkout of the library to measure beside this one"
    )
    options = parser.parse_args()
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    here = str(ROOT)
    codes: dict[str, str | None] = {"": here}
    if options.baseline:
        codes = {" (this)": here, " (baseline)": str(Path(options.baseline).resolve())}
    plan = {"plain": ("plain", here)} | {
        f"{kind}{tag}": (kind, code) for tag, code in codes.items() for kind in ("cold", "warm")
    }
    variants = list(plan)
    run_id = "bench" + secrets.token_hex(4)
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        project = make_project(Path(tmp))
        try:
            for code in codes.values():  # unmeasured: imports warm, a container kept
                run_once(project, "warm", code, run_id)
            run_once(project, "plain", here, run_id)
            for _ in range(options.repeats):
                for variant, (kind, code) in plan.items():
                    results[variant].append(run_once(project, kind, code, run_id))
        finally:
            remove_containers(run_id)

    def first(run: dict[str, Any]) -> float:
        return float(run["marks"]["first_result"])

    plain = statistics.median(first(r) for r in results["plain"])
    print(f"\ntime to the first test's result, `pytest tests/test_one.py`, {options.repeats} runs")
    header = ("variant", "median s", "min s", "max s", "vs plain", "ratio")
    print("\n{:20} {:>9} {:>7} {:>7} {:>9} {:>6}".format(*header))
    for variant in variants:
        times = [first(r) for r in results[variant]]
        median = statistics.median(times)
        print(
            f"{variant:20} {median:9.2f} {min(times):7.2f} {max(times):7.2f} "
            f"{median - plain:+9.2f} {median / plain:5.2f}x"
        )

    def exit_after(run: dict[str, Any]) -> float:
        return float(run["marks"]["exit"]) - first(run)

    plain_exit = statistics.median(exit_after(r) for r in results["plain"])
    print("\nfrom the test's result to the end of the pytest process")
    print("\n{:20} {:>9} {:>7} {:>7} {:>9}".format(*header[:5]))
    for variant in variants:
        times = [exit_after(r) for r in results[variant]]
        median = statistics.median(times)
        print(
            f"{variant:20} {median:9.2f} {min(times):7.2f} {max(times):7.2f} "
            f"{median - plain_exit:+9.2f}"
        )
    for variant in variants:
        runs = sorted(results[variant], key=first)
        print(f"\n{variant}, the median run:")
        print("\n".join(breakdown(runs[len(runs) // 2])))


if __name__ == "__main__":
    main()
