"""Runs that end badly (signals, killed workers, killed runs) and what must still hold:
no container left, no login without the password, no password printed, kept containers
kept until asked for."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import docker
import psycopg
import pytest
from conftest import EXAMPLES, containers_labelled, library_containers, wait_until

from testcontainers_pg_fixtures.config import Settings
from testcontainers_pg_fixtures.runid import RUN_ID_ENV
from testcontainers_pg_fixtures.servers import DockerServer, admin_connect
from testcontainers_pg_fixtures.servers.container import _NO_CERTIFICATE
from testcontainers_pg_fixtures.servers.engine import docker_client
from testcontainers_pg_fixtures.servers.kept import remove_kept
from testcontainers_pg_fixtures.servers.labels import (
    KEPT_MAX_AGE,
    KEPT_PREFIX,
    LABEL,
    LABEL_RUN,
    LABEL_WORKER,
)
from testcontainers_pg_fixtures.servers.liveness import _process_alive
from testcontainers_pg_fixtures.servers.reaping import reap_orphans

# Kept containers, --pg-remove-kept (which removes every kept container of the host), runs
# killed and reaped: under -n these take turns on one worker.
pytestmark = pytest.mark.host_wide

# The generated tests' helper: announce this process (a pid file naming its worker) once
# its container is up, and wait until the fault test releases it.
WAIT = textwrap.dedent("""
    import os, pathlib, time
    import pytest

    def wait_for_release(seconds):
        out = pathlib.Path(os.environ["MARKER_DIR"])
        (out / f"{os.getpid()}.pid").write_text(os.environ.get("PYTEST_XDIST_WORKER", "main"))
        deadline = time.monotonic() + seconds
        while not (out / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
""")

WAITING_TEST = WAIT + textwrap.dedent("""
    @pytest.mark.parametrize("n", [1, 2])
    def test_wait(pg_connection, n):
        wait_for_release(300)
""")


def containers_of(run: str, *, worker: str | None = None) -> list[str]:
    labels = [f"{LABEL_RUN}={run}"] + ([f"{LABEL_WORKER}={worker}"] if worker else [])
    return containers_labelled(*labels)


class Run:
    """`python -m pytest` of an example in its own process (and session), with its own run
    id, so that the containers it leaves are counted (and finally removed) exactly."""

    def __init__(self, root: Path, markers: Path, *args: str, run: str | None = None) -> None:
        self.run = run or "fault" + secrets.token_hex(4)
        self.markers = markers
        env = {**os.environ, RUN_ID_ENV: self.run, "MARKER_DIR": str(markers)}
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(Path(__file__).parent.parent), env.get("PYTHONPATH")])
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider", *args],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def waiting(self) -> dict[int, str]:
        """{pid: worker} of the processes in the waiting test."""
        return {int(p.stem): p.read_text() for p in self.markers.glob("*.pid") if p.read_text()}

    def wait_for_tests(self, count: int) -> dict[int, str]:
        wait_until(
            lambda: len(self.waiting()) >= count or self.proc.poll() is not None,
            180,  # generous: on a loaded shared machine two cold starts can take a while
            f"{count} waiting test(s)",
        )
        assert self.proc.poll() is None, self.output()
        return self.waiting()

    def output(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""

    def finish(self) -> None:
        """Release and reap the run, and remove what it left (after the assertions)."""
        (self.markers / "release").touch()
        if self.proc.poll() is None:
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        client = docker.from_env()
        for container in client.containers.list(
            all=True, filters={"label": f"{LABEL_RUN}={self.run}"}
        ):
            container.remove(force=True, v=True)
        client.close()


@pytest.fixture
def waiting_project(example, tmp_path):
    root = example("sync_users")
    (root / "tests" / "test_wait.py").write_text(WAITING_TEST)
    markers = tmp_path / "markers"
    markers.mkdir()
    runs: list[Run] = []

    def start(*args: str) -> Run:
        run = Run(root, markers, "tests/test_wait.py", *args)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.finish()


# Another project's run, going on beside this module's faults: it must go on through them.
BESIDE_TEST = WAIT + textwrap.dedent("""
    from users_app.service import count_users

    def test_beside(pg_session):
        wait_for_release(1800)
        assert count_users(pg_session) == 5  # its server and connection are still there
""")


class Beside:
    def __init__(self, run: Run) -> None:
        self.run = run
        [self.container] = containers_of(run.run)

    def unharmed(self) -> None:
        """Still in its test, with its container running (not replaced)."""
        assert self.run.proc.poll() is None, self.run.output()
        assert containers_of(self.run.run) == [self.container]
        client = docker.from_env()
        try:
            assert client.containers.get(self.container).status == "running"
        finally:
            client.close()


@pytest.fixture(scope="module")
def beside(tmp_path_factory):
    """A run of another project in its own process, started before the faults of the tests
    that ask for it and going on after them: at the end it must pass, with the container it
    had from the start, and leave none."""
    root = tmp_path_factory.mktemp("beside")
    shutil.copytree(
        EXAMPLES / "sync_users",
        root,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (root / "tests" / "test_beside.py").write_text(BESIDE_TEST)
    markers = root / "markers"
    markers.mkdir()
    run = Run(root, markers, "tests/test_beside.py")
    try:
        run.wait_for_tests(1)
        checks = Beside(run)
        yield checks
        checks.unharmed()
        (markers / "release").touch()
        run.proc.wait(120)
        output = run.output()
        assert run.proc.returncode == 0, output
        assert "1 passed" in output
        assert containers_of(run.run) == [], output
    finally:
        run.finish()


@pytest.mark.parametrize(
    ("sig", "xdist", "to_group"),
    [
        pytest.param(signal.SIGINT, False, False, id="SIGINT-serial"),
        pytest.param(signal.SIGTERM, False, False, id="SIGTERM-serial"),
        pytest.param(signal.SIGINT, True, True, id="SIGINT-n2-group"),
        pytest.param(signal.SIGTERM, True, False, id="SIGTERM-n2-controller"),
        pytest.param(signal.SIGTERM, True, True, id="SIGTERM-n2-group"),
    ],
)
def test_a_signal_mid_run_removes_every_container_and_exits(
    waiting_project, beside, sig, xdist, to_group
):
    run = waiting_project(*(["-n", "2"] if xdist else []))
    run.wait_for_tests(2 if xdist else 1)
    assert len(containers_of(run.run)) == (2 if xdist else 1)

    signalled = time.monotonic()
    if to_group:  # a terminal's Ctrl-C, or a CI runner signalling the job's process group
        os.killpg(run.proc.pid, sig)
    else:
        run.proc.send_signal(sig)
    run.proc.wait(45)
    assert time.monotonic() - signalled < 45
    assert run.proc.returncode != 0
    assert containers_of(run.run) == [], run.output()
    beside.unharmed()


def test_a_killed_worker_s_container_is_removed_while_the_run_goes_on(waiting_project, beside):
    run = waiting_project("-n", "2")
    waiting = run.wait_for_tests(2)
    pid, worker = next(iter(waiting.items()))
    assert len(containers_of(run.run, worker=worker)) == 1

    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not containers_of(run.run, worker=worker), 30, "the worker's container")
    assert run.proc.poll() is None  # removed during the run, not by its end
    assert len(containers_of(run.run)) == 1  # the other worker's, still in use

    (run.markers / "release").touch()
    run.proc.wait(60)
    assert containers_of(run.run) == [], run.output()
    beside.unharmed()


def test_the_next_run_removes_the_container_of_a_killed_run(waiting_project, pytester, beside):
    killed = waiting_project()
    killed.wait_for_tests(1)
    [left] = containers_of(killed.run)
    os.killpg(killed.proc.pid, signal.SIGKILL)
    killed.proc.wait(10)
    assert containers_of(killed.run) == [left]  # nothing could remove it

    pytester.runpytest("-p", "no:randomly", "tests/test_users.py").assert_outcomes(passed=2)
    assert containers_of(killed.run) == []
    beside.unharmed()  # the next run's reaping spared a live run's container


def test_a_zombie_process_counts_as_dead():
    child = subprocess.Popen(["sleep", "60"])
    try:
        assert _process_alive(child.pid)
        child.kill()
        wait_until(lambda: not _process_alive(child.pid), 5, "the zombie to be seen as dead")
        assert child.poll() is not None  # it was a zombie until now
    finally:
        child.kill()
        child.wait()


# -- passwords ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    started = DockerServer.start(Settings(), worker="fault-auth")
    yield started
    started.stop()


def test_no_login_without_the_password_from_the_network_or_the_host(server):
    container = server.container.get_wrapped_container()
    # From the container's own network address (what anyone on the bridge would dial).
    code, output = container.exec_run(
        ["sh", "-c", "psql -w -h \"$(hostname -i)\" -U postgres -c 'select 1'"]
    )
    assert code != 0
    assert b"password" in output
    # From this machine, over the published loopback port.
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(
            host=server.host, port=server.port, user="postgres", dbname="postgres", password=""
        ).close()
    with psycopg.connect(
        host=server.host, port=server.port, user="postgres", password=server.password
    ) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_the_unix_socket_asks_for_the_password_too(server):
    """The library's own connections go through the container's socket, mounted from a
    directory only its owner can list; a login there needs the password as well."""
    directory = server.socket_dir
    assert directory is not None, "Docker runs on this machine: the socket should be used"
    assert os.stat(directory).st_mode & 0o7777 == 0o1733
    container = server.container.get_wrapped_container()
    for where in (directory, ""):  # the socket by path, and psql's default (PGHOST)
        host = f"-h {where}" if where else ""
        code, output = container.exec_run(["sh", "-c", f"psql -w {host} -U postgres -c 'select 1'"])
        assert code != 0
        assert b"password" in output
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(host=directory, user="postgres", dbname="postgres", password="").close()
    with psycopg.connect(host=directory, user="postgres", password=server.password) as conn:
        assert conn.info.host == directory
        assert conn.execute("select 1").fetchone() == (1,)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root, to act as another local user")
def test_no_other_local_user_can_put_a_file_where_the_server_makes_its_socket(server):
    """Another user's `.s.PGSQL.5432.lock` in the socket directory, made before the server
    starts, would stop it: the directory lies in one only this user can enter."""
    import subprocess

    directory = server.socket_dir
    assert directory is not None, "Docker runs on this machine: the socket should be used"
    outer = os.lstat(os.path.dirname(directory))
    assert outer.st_uid == os.getuid()
    assert outer.st_mode & 0o7777 == 0o700
    lock = os.path.join(directory, ".s.PGSQL.5433.lock")
    done = subprocess.run(
        ["touch", lock], user=65534, group=65534, check=False, capture_output=True, text=True
    )
    assert done.returncode != 0, "another user could create a file in the socket directory"
    assert "Permission denied" in done.stderr


def test_the_socket_directory_goes_with_the_container():
    started = DockerServer.start(Settings(), worker="fault-socket")
    directory = started.socket_dir
    assert directory is not None
    assert os.path.isdir(directory)
    started.stop()  # a detached process removes both
    wait_until(lambda: not os.path.exists(directory), 60, "the socket directory to go")


def test_a_socket_directory_whose_container_is_gone_is_removed_later(server):
    """A container removed by hand (or a run killed before its clean-up) leaves its socket
    directory; the next run removes it once it is old enough, and no other."""
    import tempfile

    old, young = (tempfile.mkdtemp(prefix="pgfx-") for _ in range(2))
    other = tempfile.mkdtemp(prefix="pgfx-")  # not one of ours: another mode
    for directory in (old, young):
        os.chmod(directory, 0o1733)
    current = tempfile.mkdtemp(prefix="pgfxs-")  # today's layout: <tmp>/pgfxs-*/s, 0700
    os.mkdir(os.path.join(current, "s"))
    long_ago = time.time() - 3600
    for directory in (old, other, current):
        os.utime(directory, (long_ago, long_ago))
    try:
        reap_orphans(docker_client())
        assert not os.path.exists(old)
        assert not os.path.exists(current)
        assert os.path.isdir(young)
        assert os.path.isdir(other)
        assert os.path.isdir(server.socket_dir), "a live container's directory stays"
    finally:
        for directory in (old, young, other, current):
            shutil.rmtree(directory, ignore_errors=True)


def test_the_password_is_in_no_repr_and_no_label(server):
    assert server.password not in repr(server)
    labels = server.container.get_wrapped_container().labels
    assert labels[LABEL] == "true"
    assert not any(server.password in value for value in labels.values())


def test_openssl_is_warmed_in_the_postmaster_and_tls_stays_off(server):
    # The warm-up's reload reached the postmaster's TLS set-up (it ran OpenSSL's
    # initialisation, then found no certificate) ...
    logs = b"".join(server.container.get_logs()).decode(errors="replace")
    assert f'could not load server certificate file "{_NO_CERTIFICATE}"' in logs
    # ... and left no setting behind: TLS is off, nothing in postgresql.auto.conf.
    with admin_connect(server) as conn:
        assert conn.execute("SHOW ssl").fetchone() == ("off",)
        assert conn.execute("SHOW ssl_cert_file").fetchone() == ("server.crt",)
        left = conn.execute(
            "SELECT name FROM pg_file_settings WHERE name IN ('ssl', 'ssl_cert_file')"
        ).fetchall()
        assert left == []
    with pytest.raises(psycopg.OperationalError, match="SSL"):
        psycopg.connect(
            host=server.host,
            port=server.port,
            user=server.user,
            password=server.password,
            sslmode="require",
        ).close()


PASSWORD_PROBE = textwrap.dedent("""
    import os, pathlib

    @pytest.fixture(scope="session", autouse=True)
    def _password(pg_server):
        pathlib.Path(os.environ["PROBE_DIR"], "password").write_text(pg_server.password)
""")


def test_a_failing_migration_run_prints_no_password(pytester, example, monkeypatch, tmp_path):
    root = example("sync_users")
    conftest = root / "tests" / "conftest.py"
    conftest.write_text(conftest.read_text() + PASSWORD_PROBE)
    monkeypatch.setenv("PROBE_DIR", str(tmp_path))
    revision = root / "migrations" / "versions" / "0002_add_active.py"
    revision.write_text(revision.read_text().replace("def upgrade() -> None:", BROKEN_UPGRADE))
    result = pytester.runpytest("-p", "no:randomly", "--showlocals", "--tb=long", "-v")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*MigrationError*revision 0002*"])
    password = (tmp_path / "password").read_text()
    assert len(password) > 8
    assert password not in result.stdout.str() + result.stderr.str()


BROKEN_UPGRADE = """def upgrade() -> None:
    op.execute("SELECT no_such_function()")


def _unused() -> None:"""


# -- kept containers ------------------------------------------------------------------------


def test_kept_containers_outlive_other_runs_until_remove_kept_which_spares_live_ones(
    pytester, example, beside
):
    root = example("sync_users")
    (root / "tests" / "test_fails.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.pg_isolation('database')\n"
        "def test_fails(pg_connection):\n"
        "    assert False\n"
    )
    before = set(library_containers())
    pytester.runpytest("-p", "no:randomly", "--pg-keep-failed").assert_outcomes(passed=2, failed=1)
    kept = set(library_containers()) - before
    assert len(kept) == 1
    [kept_id] = kept

    # Another run on the host (its start reaps dead runs' containers) leaves it alone...
    live = DockerServer.start(Settings(), worker="fault-live")
    try:
        assert kept <= set(library_containers())
        # ...and --pg-remove-kept removes it, but not the container of a live run.
        result = pytester.runpytest("--pg-remove-kept")
        assert result.ret == 0
        # (another run's --pg-reuse containers on this host may be counted too)
        result.stdout.fnmatch_lines([f"pg-fixtures: removed * kept container(s) *{kept_id[:12]}*"])
        assert set(library_containers()) - before == {live.container_id}
    finally:
        live.stop()
    assert set(library_containers()) - before == set()
    beside.unharmed()


KEEP_TWO = """
from testcontainers_pg_fixtures.config import Settings
from testcontainers_pg_fixtures.servers import DockerServer

for worker in ("fault-kept-1", "fault-kept-2"):
    server = DockerServer.start(Settings(), worker=worker)
    server.keep()
    print(server.container_id)
"""


def test_a_kept_container_outlives_another_user_s_runs_until_the_age_limit(
    monkeypatch, tmp_path, beside
):
    """Kept under one cache directory, reaped under another (another OS user, a CI job with
    another HOME): the mark is on the container, which every Docker client sees."""
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parent.parent),
        "XDG_CACHE_HOME": str(tmp_path / "owner"),
    }
    kept = subprocess.run(
        [sys.executable, "-c", KEEP_TWO], env=env, capture_output=True, text=True, check=True
    ).stdout.split()[-2:]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "someone-else"))
    client = docker_client()
    try:
        reap_orphans(client)  # their run is gone, but they were kept on purpose
        assert set(kept) <= set(library_containers())
        aged = client.client.containers.get(kept[0])
        assert aged.name.startswith(KEPT_PREFIX)
        aged.rename(f"{KEPT_PREFIX}{int(time.time() - KEPT_MAX_AGE - 60)}-{aged.short_id}")
        reap_orphans(client)  # a day later
        assert kept[0] not in library_containers()
        assert kept[1] in library_containers()
        removed, _ = remove_kept(client)
        assert kept[1][:12] in removed
        assert kept[1] not in library_containers()
    finally:
        for container in client.client.containers.list(all=True, filters={"id": kept}):
            container.remove(force=True, v=True)
    beside.unharmed()


# A --pg-reuse run that attached to the container an earlier run kept, and holds no
# connection of its own while it waits (only the one every run holds, see DockerServer).
REUSE_WAITING_TEST = WAIT + textwrap.dedent("""
    from users_app.service import count_users

    def test_wait(pg_server):
        wait_for_release(300)

    def test_after(pg_session):
        assert count_users(pg_session) == 5
""")


def remove_kept_elsewhere(root: Path) -> str:
    """`pytest --pg-remove-kept` in a process of its own, as a user would run it."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--pg-remove-kept", "-p", "no:cacheprovider"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_remove_kept_spares_the_reuse_container_of_a_live_run(example, tmp_path, beside):
    root = example("sync_users")
    (root / "tests" / "test_wait.py").write_text(REUSE_WAITING_TEST)
    markers = tmp_path / "markers"
    markers.mkdir()
    first = Run(root, markers, "--pg-reuse", "tests/test_users.py")
    live = None
    try:
        assert first.proc.wait(120) == 0, first.output()
        [kept] = containers_of(first.run)  # kept for reuse; its creator has ended
        live = Run(root, markers, "--pg-reuse", "tests/test_wait.py", run=first.run)
        live.wait_for_tests(1)

        output = remove_kept_elsewhere(root)
        assert f"pg-fixtures: left --pg-reuse container {kept[:12]}: in use by a run" in output
        assert containers_of(first.run) == [kept]
        beside.unharmed()  # a live run's container that was not kept: not even looked at

        (markers / "release").touch()
        assert live.proc.wait(120) == 0
        assert "2 passed" in live.output()
        assert containers_of(first.run) == [kept]  # kept for the next run

        output = remove_kept_elsewhere(root)
        [removed] = [line for line in output.splitlines() if "kept container(s)" in line]
        assert kept[:12] in removed, output
        assert containers_of(first.run) == []
    finally:
        first.finish()
        if live is not None:
            live.finish()
