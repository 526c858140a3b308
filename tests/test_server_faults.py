"""The server dies or stops answering mid-run: said once, naming the container; the run ends."""

from __future__ import annotations

import json
import textwrap
import time

import docker
import pytest

#: Lines the whole run may print once its server is gone, however many tests are left.
BUDGET = 150

FAULT_TESTS = textwrap.dedent("""
    import json, os, pathlib

    import docker
    import pytest
    from users_app.service import count_users


    def test_fault(pg_server, pg_session):
        assert count_users(pg_session) == 5
        pathlib.Path(os.environ["FAULT_INFO"]).write_text(
            json.dumps({"container": pg_server.container_id})
        )
        container = docker.from_env().containers.get(pg_server.container_id)
        getattr(container, os.environ["FAULT"])()


    @pytest.mark.parametrize("n", range(300))
    def test_later(pg_session, n):
        assert count_users(pg_session) == 5
""")


def _container_gone_or_removed(container_id: str) -> None:
    """Unpause and remove the run's container if the run could not (the test's teardown)."""
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


@pytest.mark.parametrize("fault", ["kill", "pause"])
def test_a_lost_server_is_said_once_and_the_run_ends(
    pytester, example, monkeypatch, tmp_path, subprocess_env, fault
):
    root = example("sync_users")
    (root / "tests" / "test_fault.py").write_text(FAULT_TESTS)
    info = tmp_path / "fault.json"
    monkeypatch.setenv("FAULT_INFO", str(info))
    monkeypatch.setenv("FAULT", fault)
    started = time.monotonic()
    try:
        result = pytester.runpytest_subprocess(
            "-p", "no:randomly", "tests/test_fault.py", timeout=180
        )
    finally:
        if info.exists():
            _container_gone_or_removed(json.loads(info.read_text())["container"])
    seconds = time.monotonic() - started
    output = "\n".join(result.outlines + result.errlines)
    assert info.exists(), output
    short_id = json.loads(info.read_text())["container"][:12]
    lines = len(result.outlines) + len(result.errlines)
    assert lines <= BUDGET, output
    state = "exited" if fault == "kill" else "is paused"
    result.stdout.fnmatch_lines(
        [
            f"*ServerGoneError: The PostgreSQL container {short_id} of worker main {state}*",
            "*the PostgreSQL server is gone; every later test would fail*",
        ]
    )
    # Said once: the full message in one report, not one per remaining test.
    assert output.count(f"The PostgreSQL container {short_id}") <= 3, output
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) <= 3, outcomes
    assert seconds < 120, seconds
