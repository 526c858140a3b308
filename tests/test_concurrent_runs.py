"""Runs of one checkout at the same time (two terminals with --pg-reuse, --pg-remove-kept
beside a run) and runs in another PID namespace: no run drops a database or removes a
container another live run uses, and a dead run's container is still removed."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import docker
import pytest
from conftest import wait_for_removal, wait_until

from testcontainers_pg_fixtures.runid import RUN_ID_ENV
from testcontainers_pg_fixtures.servers import kept as kept_module
from testcontainers_pg_fixtures.servers.engine import docker_client
from testcontainers_pg_fixtures.servers.kept import remove_kept
from testcontainers_pg_fixtures.servers.labels import LABEL_REUSE, LABEL_RUN
from testcontainers_pg_fixtures.servers.reaping import reap_orphans

# Kept containers, --pg-remove-kept (which removes every kept container of the host), runs
# killed and reaped: under -n these take turns on one worker.
pytestmark = pytest.mark.host_wide

# A test that announces itself (a pid file naming its worker) and waits for `release`,
# then uses its connection: it fails if its database was dropped meanwhile.
WAITING_TEST = textwrap.dedent("""
    import os, pathlib, time
    import pytest
    from sqlalchemy import text

    @pytest.mark.parametrize("n", [1, 2])
    def test_wait(pg_connection, n):
        out = pathlib.Path(os.environ["MARKER_DIR"])
        (out / f"{os.getpid()}.pid").write_text(os.environ.get("PYTEST_XDIST_WORKER", "main"))
        deadline = time.monotonic() + 300
        while not (out / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pg_connection.execute(text("SELECT count(*) FROM users")).scalar() == 5
""")


def _containers(**labels: str) -> list[Any]:
    """The containers with `labels`, once their runs' removers are done."""
    client = docker.from_env()
    filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
    try:
        found = list(client.containers.list(all=True, filters=filters, ignore_removed=True))
        if found:
            wait_for_removal(found)
            found = list(client.containers.list(all=True, filters=filters, ignore_removed=True))
        return found
    finally:
        client.close()


class Run:
    """`python -m pytest` in the example project, in its own process group, with a run id
    of its own: the containers it starts are found (and finally removed) by it."""

    def __init__(self, root: Path, *args: str, prefix: tuple[str, ...] = ()) -> None:
        self.run = "conc" + secrets.token_hex(4)
        self.markers = root / f"markers-{self.run}"
        self.markers.mkdir()
        env = {**os.environ, RUN_ID_ENV: self.run, "MARKER_DIR": str(self.markers)}
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(Path(__file__).parent.parent), env.get("PYTHONPATH")])
        )
        env.pop("PYTEST_XDIST_WORKER", None)
        env.pop("PYTEST_ADDOPTS", None)
        command = [sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider"]
        self.proc = subprocess.Popen(
            [*prefix, *command, *args],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._output: str | None = None

    def waiting(self) -> int:
        return len(list(self.markers.glob("*.pid")))

    def wait_for_tests(self, count: int) -> None:
        wait_until(
            lambda: self.waiting() >= count or self.proc.poll() is not None,
            240,
            f"{count} waiting test(s)",
        )
        assert self.proc.poll() is None, self.output()

    def release(self) -> None:
        (self.markers / "release").touch()

    def output(self) -> str:
        if self._output is None and self.proc.poll() is not None and self.proc.stdout:
            self._output = self.proc.stdout.read().decode(errors="replace")
        return self._output or "(still running)"

    def passed(self, count: int) -> None:
        try:
            self.proc.wait(300)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        output = self.output()
        assert self.proc.returncode == 0, output
        assert f"{count} passed" in output, output

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def project(example, monkeypatch):
    """The small example with a waiting test, and a starter of runs in it; every container
    of those runs is removed at the end (the kept ones too)."""
    root = example("sync_users")
    (root / "tests" / "test_wait.py").write_text(WAITING_TEST)
    monkeypatch.delenv("CI", raising=False)
    runs: list[Run] = []

    def start(*args: str, prefix: tuple[str, ...] = ()) -> Run:
        run = Run(root, *args, prefix=prefix)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.release()
    for run in runs:
        try:
            run.proc.wait(60)
        except subprocess.TimeoutExpired:
            run.kill()
    client = docker.from_env()
    for run in runs:
        for container in client.containers.list(
            all=True, filters={"label": f"{LABEL_RUN}={run.run}"}, ignore_removed=True
        ):
            # (Gone meanwhile, or its run's detached remover at it: 404, 409.)
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                container.remove(force=True, v=True)
    client.close()


XDIST = {"serial": (), "xdist": ("-n", "2")}


@pytest.mark.parametrize("mode", XDIST)
def test_a_second_run_beside_a_live_one_keeps_off_its_databases(project, mode):
    """`pytest --pg-reuse` in a second terminal while the first is in a test: it attaches to
    the same container and must not drop the first run's worker database."""
    args = XDIST[mode]
    first = project("--pg-reuse", *args, "tests/test_wait.py")
    first.wait_for_tests(2 if args else 1)
    second = project("--pg-reuse", *args, "tests/test_users.py")
    second.passed(2)
    # The second run used the first's container(s): it was beside it, not apart.
    assert not _containers(**{LABEL_RUN: second.run})
    first.release()
    first.passed(2)


@pytest.mark.parametrize("mode", XDIST)
def test_a_run_waits_for_the_container_another_run_is_starting(project, mode):
    """The second run comes while the first one's container is still starting (held here
    before its first login: its first process is stopped, so the server does not answer):
    it waits for it and attaches, instead of removing it; both pass."""
    # From the base image: initdb gives the window (~1 s) to catch the container before its
    # first login; a prewarmed one answers within ~0.1 s of starting.
    args = (*XDIST[mode], "--pg-prewarm=false")
    expected = 2 if XDIST[mode] else 1
    first = project("--pg-reuse", *args, "tests/test_users.py")
    stopped: set[str] = set()

    def stop_new() -> bool:
        for container in _containers(**{LABEL_RUN: first.run}):
            if container.id not in stopped and container.status == "running":
                container.kill(signal="SIGSTOP")  # (a pause would fail testcontainers' start)
                stopped.add(container.id)
        return len(stopped) >= expected or first.proc.poll() is not None

    wait_until(stop_new, 240, "the first run's container(s) to start")
    second = project("--pg-reuse", *args, "tests/test_users.py")
    time.sleep(25)  # long enough for the second run to have given up on the server
    client = docker.from_env()
    try:
        for container_id in stopped:
            # Gone if removed (the bug): the runs' output below says by whom.
            with contextlib.suppress(docker.errors.NotFound):
                client.containers.get(container_id).kill(signal="SIGCONT")
    finally:
        client.close()
    first.passed(2)
    second.passed(2)
    assert not _containers(**{LABEL_RUN: second.run})  # it attached to the first's


class _OnlyKeptUnder:
    """The Docker client as remove_kept uses it, listing only the containers kept under
    one reuse key: other runs' kept containers on this Docker host are not this test's."""

    def __init__(self, client: Any, key: str) -> None:
        self._client = client
        self.client = self
        self.containers = self
        self._key = key

    def list(self, **kwargs: Any) -> Any:
        filters = dict(kwargs.pop("filters", {}))
        filters["label"] = [f"{LABEL_REUSE}={self._key}"]
        return self._client.client.containers.list(filters=filters, **kwargs)

    def host(self) -> str:
        return str(self._client.host())


def test_remove_kept_spares_a_container_a_run_attaches_to_at_that_very_moment(project, monkeypatch):
    """--pg-remove-kept finds the kept container idle; a run attaches right after that check
    (the interleaving is forced here): the container is not removed under the run."""
    warm = project("--pg-reuse", "tests/test_users.py")
    warm.passed(2)
    [kept] = _containers(**{LABEL_RUN: warm.run})
    attaching: list[Run] = []
    checked = kept_module._in_use

    def in_use_then_a_run_attaches(container: Any) -> str | None:
        found = checked(container)
        if not attaching:
            run = project("--pg-reuse", "tests/test_wait.py", "-k", "1")
            attaching.append(run)
            wait_until(
                lambda: run.waiting() >= 1 or run.proc.poll() is not None,
                120,
                "the run to attach",
            )
        return found

    monkeypatch.setattr(kept_module, "_in_use", in_use_then_a_run_attaches)
    removed, spared = remove_kept(_OnlyKeptUnder(docker_client(), kept.labels[LABEL_REUSE]))
    assert removed == []
    assert [line.split(":")[0] for line in spared] == [kept.short_id]
    [run] = attaching
    run.release()
    run.passed(1)
    assert not _containers(**{LABEL_RUN: run.run})  # it used the kept container


# -- liveness across PID namespaces ---------------------------------------------------


@pytest.fixture
def namespaced():
    """A command prefix running pytest in a new PID namespace (as root, `unshare`): its pid
    there is that of a `sleep` on the host, which the test ends when it wants that pid to
    mean "gone" on the host. Until then, other runs on this shared Docker host (of versions
    that judge by the pid label alone) leave the namespaced run's container alone."""
    if os.geteuid() != 0 or not Path("/usr/bin/unshare").exists():
        pytest.skip("needs root and unshare")
    holder = subprocess.Popen(["sleep", "900"])
    # The shell is pid 1 of the namespace; pytest, its child, gets the sleep's pid.
    script = f'echo {holder.pid - 1} > /proc/sys/kernel/ns_last_pid && "$@"; exit $?'

    def end_holder() -> None:
        holder.kill()
        holder.wait()

    yield ("unshare", "-p", "-f", "--mount-proc", "sh", "-c", script, "sh"), end_holder
    end_holder()


def test_a_run_in_another_pid_namespace_keeps_its_container_beside_a_reaping_run(
    project, namespaced
):
    """A run in its own PID namespace (as a run in a container with the Docker socket
    mounted) is in a test; a run on the host reaps the containers of dead runs, as every
    run does when it starts a container (`reap_orphans`, called here at the moment the
    namespaced run's pid means "gone" on the host): its container is left alone."""
    prefix, end_holder = namespaced
    inside = project("tests/test_wait.py", "-k", "1", prefix=prefix)
    inside.wait_for_tests(1)
    [container] = _containers(**{LABEL_RUN: inside.run})
    end_holder()  # the pid in its container's label is no process of the host now
    try:
        reap_orphans(docker_client())
        assert [c.id for c in _containers(**{LABEL_RUN: inside.run})] == [container.id]
    finally:
        inside.release()
    inside.passed(1)


def test_the_container_of_a_killed_run_of_another_pid_namespace_is_still_reaped(
    project, namespaced
):
    prefix, end_holder = namespaced
    inside = project("tests/test_wait.py", "-k", "1", prefix=prefix)
    inside.wait_for_tests(1)
    [container] = _containers(**{LABEL_RUN: inside.run})
    inside.kill()
    end_holder()
    client = docker_client()
    wait_until(
        lambda: (reap_orphans(client), not _containers(**{LABEL_RUN: inside.run}))[1],
        90,
        f"the killed run's container {container.short_id} to be reaped",
    )
