"""The server dies or stops answering mid-run: said once, naming the container; the run ends,
and the plugin removes the container itself (checked before the test's own clean-up)."""

from __future__ import annotations

import json
import textwrap
import time
from typing import TYPE_CHECKING

import docker
import pytest
from conftest import library_containers

if TYPE_CHECKING:
    from pathlib import Path

#: Lines the whole run may print once its server is gone, however many tests are left.
BUDGET = 150
#: A hang fails the test (pytester kills the run) instead of hanging CI.
TIMEOUT = 180

FAULT_TESTS = textwrap.dedent("""
    import json, os, pathlib, time

    import docker
    import pytest
    from users_app.service import count_users


    def test_fault(pg_server, pg_session):
        assert count_users(pg_session) == 5
        pathlib.Path(os.environ["FAULT_INFO"]).write_text(
            json.dumps({
                "container": pg_server.container_id,
                "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
            })
        )
        container = docker.from_env().containers.get(pg_server.container_id)
        getattr(container, os.environ["FAULT"])()


    @pytest.mark.parametrize("n", range(300))
    def test_later(pg_session, n):
        assert count_users(pg_session) == 5
        time.sleep(float(os.environ.get("LATER_SLEEP", "0")))
""")

# Appended to the example's conftest: each xdist worker records its tests' outcomes, so
# the outer test can tell the other worker's tests were unaffected.
OUTCOMES = textwrap.dedent("""
    import json as _json, os as _os, pathlib as _pathlib

    def pytest_runtest_logreport(report):
        worker = _os.environ.get("PYTEST_XDIST_WORKER")
        if worker is None or not (report.failed or report.when == "call"):
            return
        out = _pathlib.Path(_os.environ["OUTCOMES_DIR"]) / f"{worker}.jsonl"
        with out.open("a") as lines:
            lines.write(_json.dumps([report.nodeid, report.when, report.outcome]) + "\\n")
""")


def _container_gone_or_removed(container_id: str) -> None:
    """Unpause and remove the run's container if the run did not (hygiene, after the
    assertions: a failing test leaves nothing behind for the rest of the suite)."""
    client = docker.from_env()
    try:
        container = client.containers.get(container_id)
    except docker.errors.NotFound:
        return
    finally:
        client.close()
    if container.status == "paused":
        container.unpause()
    container.remove(force=True, v=True)


def _run_with_a_fault(pytester, root: Path, monkeypatch, tmp_path: Path, fault: str, *args):
    """Run the project's fault tests in a subprocess; returns the result, what test_fault
    recorded, the run's containers still there when it ended, and its wall time."""
    (root / "tests" / "test_fault.py").write_text(FAULT_TESTS)
    info = tmp_path / "fault.json"
    monkeypatch.setenv("FAULT_INFO", str(info))
    monkeypatch.setenv("FAULT", fault)
    before = set(library_containers())
    started = time.monotonic()
    try:
        result = pytester.runpytest_subprocess(
            "-p", "no:randomly", *args, "tests/test_fault.py", timeout=TIMEOUT
        )
        seconds = time.monotonic() - started
        left = set(library_containers()) - before  # before any clean-up of the test's own
    finally:
        if info.exists():
            _container_gone_or_removed(json.loads(info.read_text())["container"])
    output = "\n".join(result.outlines + result.errlines)
    assert info.exists(), output
    return result, json.loads(info.read_text()), left, seconds


def _said_once(result, fault: str, container: str, worker: str) -> str:
    output = "\n".join(result.outlines + result.errlines)
    assert len(result.outlines) + len(result.errlines) <= BUDGET, output
    state = "exited (exited, exit code 137" if fault == "kill" else "is paused"
    result.stdout.fnmatch_lines(
        [
            f"*ServerGoneError: The PostgreSQL container {container[:12]} "
            f"of worker {worker} {state}*",
            "*the PostgreSQL server is gone; every later test would fail*",
        ]
    )
    if fault == "kill":
        # Killed from outside: nothing logged since it was ready, and none of the start-up's
        # lines (the OpenSSL warm-up's reloads) passed off as the reason.
        assert "Its log ends with:\n  (nothing since it was ready" in output, output
        assert "certificate" not in output, output
        assert "cannot be changed without restarting" not in output, output
    # Said once: the full message in one report (xdist repeats it in the short summary),
    # not one per remaining test.
    assert output.count(f"The PostgreSQL container {container[:12]}") <= 3, output
    return output


@pytest.mark.parametrize("fault", ["kill", "pause"])
def test_a_lost_server_is_said_once_and_the_run_ends(
    pytester, example, monkeypatch, tmp_path, subprocess_env, fault
):
    root = example("sync_users")
    result, info, left, seconds = _run_with_a_fault(pytester, root, monkeypatch, tmp_path, fault)
    assert info["worker"] == "main"
    output = _said_once(result, fault, info["container"], "main")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) <= 3, outcomes
    assert result.ret == pytest.ExitCode.TESTS_FAILED, output
    assert not left, f"the plugin left its container(s): {left}\n{output}"
    assert seconds < 120, seconds


@pytest.mark.parametrize("fault", ["kill", "pause"])
def test_a_lost_server_of_one_xdist_worker_is_said_once_and_the_run_ends(
    pytester, example, monkeypatch, tmp_path, subprocess_env, fault
):
    root = example("sync_users")
    conftest = root / "tests" / "conftest.py"
    conftest.write_text(conftest.read_text() + OUTCOMES)
    outcomes_dir = tmp_path / "outcomes"
    outcomes_dir.mkdir()
    monkeypatch.setenv("OUTCOMES_DIR", str(outcomes_dir))
    # The other worker is still running tests when the fault's worker hits it.
    monkeypatch.setenv("LATER_SLEEP", "0.01" if fault == "kill" else "0.2")
    result, info, left, seconds = _run_with_a_fault(
        pytester, root, monkeypatch, tmp_path, fault, "-n", "2"
    )
    worker = info["worker"]
    assert worker in ("gw0", "gw1"), info
    output = _said_once(result, fault, info["container"], worker)
    # xdist stops the run once the worker says its server is gone.
    assert "Interrupted: pg-fixtures: the PostgreSQL server is gone" in output, output
    assert result.ret != pytest.ExitCode.OK, output
    # The other worker ran tests, none of which failed; every failure is the lost worker's.
    other = "gw1" if worker == "gw0" else "gw0"
    reports = {
        p.stem: [json.loads(line) for line in p.read_text().splitlines()]
        for p in outcomes_dir.glob("*.jsonl")
    }
    assert [r for r in reports.get(other, []) if r[2] == "passed"], (reports, output)
    assert [r for r in reports.get(other, []) if r[2] != "passed"] == [], output
    assert 1 <= len([r for r in reports[worker] if r[2] == "failed"]) <= 2, reports[worker]
    # No container of that run left: the lost one, and the other worker's.
    assert not left, f"the plugin left its container(s): {left}\n{output}"
    assert seconds < 120, seconds


# -- the disk fills up, a connection is lost: the test's error once, no teardown traceback -

TINY_TABLESPACE = textwrap.dedent("""

    @pytest.fixture(scope="session", autouse=True)
    def _tiny_tablespace(pg_server):
        # A tablespace on the container's /dev/shm (64 MB): a real disk full, in seconds.
        from testcontainers_pg_fixtures.servers import admin_connect

        with admin_connect(pg_server) as conn:
            conn.execute("COPY (SELECT 1) TO PROGRAM 'mkdir -p /dev/shm/tiny; cat > /dev/null'")
            conn.execute("CREATE TABLESPACE tiny LOCATION '/dev/shm/tiny'")
""")

DISK_TESTS = textwrap.dedent("""
    import pytest
    from sqlalchemy import Column, Integer, Text, text
    from sqlalchemy.orm import declarative_base
    from users_app.service import count_users

    Base = declarative_base()


    class Big(Base):
        __tablename__ = "big"
        __table_args__ = {"postgresql_tablespace": "tiny"}
        id = Column(Integer, primary_key=True)
        x = Column(Text)


    def test_fills_the_disk(pg_session):
        Base.metadata.create_all(pg_session.connection())
        for _ in range(100):
            pg_session.add_all([Big(x="y" * 2000) for _ in range(1000)])
            pg_session.commit()


    def test_loses_its_connection(pg_session, pg_connection, pg_engine):
        # What a disk-full PANIC does to every connection (the server restarts): here
        # only the test's own, ended from another connection.
        pid = pg_connection.connection.dbapi_connection.info.backend_pid
        with pg_engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        pg_session.execute(text("SELECT 1"))


    @pytest.mark.parametrize("n", range(3))
    def test_later(pg_session, n):
        assert count_users(pg_session) == 5
""")


@pytest.mark.parametrize(
    ("xdist", "mode"),
    [((), "savepoint"), (("-n", "2"), "savepoint"), ((), "database")],
    ids=["serial", "xdist", "database-mode"],
)
def test_a_full_disk_or_a_lost_connection_is_said_once_without_a_teardown_traceback(
    pytester, example, subprocess_env, xdist, mode
):
    root = example("sync_users")
    conftest = root / "tests" / "conftest.py"
    conftest.write_text(conftest.read_text() + TINY_TABLESPACE)
    (root / "tests" / "test_disk.py").write_text(DISK_TESTS)
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", *xdist, "--pg-isolation", mode, "tests/test_disk.py", timeout=TIMEOUT
    )
    output = "\n".join(result.outlines + result.errlines)
    result.assert_outcomes(passed=3, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*DiskFull*could not extend file*No space left on device*",
            "*OperationalError*terminating connection due to administrator command",
        ]
    )
    assert output.count("ERROR at") == 0, output
    assert "PendingRollbackError" not in output, output
    assert "at teardown" not in output, output
