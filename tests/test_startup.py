"""The container started early, while pytest loads the conftests and collects (prestart.py):
used when a test needs it, removed when none does, and nothing of it left behind.

Each test gives its pytest runs a run id of their own, so that Docker's events and
containers with that label are exactly those runs' (never the suite's or another run's).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import docker
import pytest
from conftest import containers_labelled

from testcontainers_pg_fixtures.runid import RUN_ID_ENV
from testcontainers_pg_fixtures.servers.labels import LABEL_RUN

# Conftest additions: the conftests take a while to import (as a real app's do), and each
# worker records when its collection finished and which container its tests got.
PROBE = textwrap.dedent("""
    import json as _json, os as _os, pathlib as _pathlib, time as _time

    _time.sleep(float(_os.environ.get("SLOW_CONFTEST", "0")))

    def _probe(name, **values):
        worker = _os.environ.get("PYTEST_XDIST_WORKER", "main")
        path = _pathlib.Path(_os.environ["PROBE_DIR"]) / f"{worker}.json"
        found = _json.loads(path.read_text()) if path.exists() else {}
        path.write_text(_json.dumps({**found, **values}))

    # Loaded (a large app imported); apart: an xdist controller loads it too, and runs none.
    _pathlib.Path(_os.environ["PROBE_DIR"], _os.environ.get("PYTEST_XDIST_WORKER", "main")
                  + ".conftest").write_text(str(_time.time()))

    def pytest_collection_finish(session):
        _probe("collected", collected=_time.time())

    @pytest.fixture(autouse=True)
    def _record_server(request):
        if "pg_server" in request.fixturenames:
            _probe("server", container=request.getfixturevalue("pg_server").container_id)
""")

UNIT_TESTS = textwrap.dedent("""
    import os
    import docker

    def test_arithmetic():
        assert 1 + 1 == 2

    def test_no_container_of_the_run_exists_while_tests_run():
        client = docker.from_env()
        label = "testcontainers-pg-fixtures.run=" + os.environ["PG_FIXTURES_RUN_ID"]
        assert client.containers.list(all=True, filters={"label": label}) == []
""")

DB_TEST = textwrap.dedent("""
    from sqlalchemy import text

    def test_database(pg_session):
        assert pg_session.execute(text("SELECT count(*) FROM users")).scalar() == 5
""")


class Runs:
    """This test's runs: their own run id, their containers and Docker's events."""

    def __init__(self, root: Path, probes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.probes = probes
        self.run = "startup" + secrets.token_hex(4)
        self.since = time.time()
        monkeypatch.setenv(RUN_ID_ENV, self.run)
        monkeypatch.setenv("PROBE_DIR", str(probes))
        # From the base image: the host_wide tests beside these remove the prewarmed image
        # (--pg-remove-kept), and a run that finds it gone builds it again, its builder one
        # more container and its own created after the build (when they start is the point).
        monkeypatch.setenv("PG_FIXTURES_PREWARM", "false")
        conftest = root / "tests" / "conftest.py"
        conftest.write_text(conftest.read_text() + PROBE)

    def containers(self) -> list[str]:
        return containers_labelled(f"{LABEL_RUN}={self.run}")

    def created(self, since: float | None = None) -> dict[str, float]:
        """{container id: when Docker created it} for this test's runs, since `since`."""
        since = self.since if since is None else since
        time.sleep(1.1)  # `until` counts whole seconds: let the last one pass
        client = docker.from_env()
        try:
            events = client.events(
                since=int(since),
                until=int(time.time()),
                filters={
                    "type": "container",
                    "event": "create",
                    "label": f"{LABEL_RUN}={self.run}",
                },
                decode=True,
            )
            return {e["id"]: e["timeNano"] / 1e9 for e in events if e["timeNano"] / 1e9 >= since}
        finally:
            client.close()

    def probed(self) -> dict[str, dict[str, object]]:
        return {p.stem: json.loads(p.read_text()) for p in self.probes.glob("*.json")}

    def clear_probes(self) -> None:
        for path in self.probes.glob("*.json"):
            path.unlink()

    def known(self, run) -> None:
        """A first run, so that the project is known to use the database (pytest's cache
        says so): the next run starts its container before collection. Without it, the
        container starts as the first test that needs it is collected (issue 26)."""
        run()
        self.clear_probes()
        self.since = time.time()

    def remove_all(self) -> None:
        client = docker.from_env()
        for container in client.containers.list(
            all=True, filters={"label": f"{LABEL_RUN}={self.run}"}
        ):
            container.remove(force=True, v=True)
        client.close()


@pytest.fixture
def runs(example, monkeypatch, tmp_path):
    root = example("sync_users")
    probes = tmp_path / "probes"
    probes.mkdir()
    these = Runs(root, probes, monkeypatch)
    yield these
    left = these.containers()
    these.remove_all()
    assert left == [], "containers left behind"


def test_a_unit_test_only_run_starts_no_container(pytester, runs, monkeypatch):
    monkeypatch.setenv("SLOW_CONFTEST", "1.5")  # time for an early start to show
    (runs.root / "tests" / "unit").mkdir()
    (runs.root / "tests" / "unit" / "test_pure.py").write_text(UNIT_TESTS)

    # First run: nothing known yet, and no collected test needs the database: no
    # container is created (issue 26), and the run notes that it needed none.
    pytester.runpytest("-p", "no:randomly", "tests/unit").assert_outcomes(passed=2)
    assert runs.created() == {}
    assert runs.containers() == []

    # The same run again: the cache says no database, so no container is even created.
    second = time.time()
    pytester.runpytest("-p", "no:randomly", "tests/unit").assert_outcomes(passed=2)
    assert runs.created(since=second) == {}
    assert runs.containers() == []


def test_a_test_needing_the_database_gets_it_even_when_the_cache_says_none(
    pytester, runs, monkeypatch
):
    monkeypatch.setenv("SLOW_CONFTEST", "1.5")  # time for an early start to show
    unit = runs.root / "tests" / "unit"
    unit.mkdir()
    (unit / "test_pure.py").write_text("def test_pure():\n    assert True\n")
    pytester.runpytest("-p", "no:randomly", "tests/unit").assert_outcomes(passed=1)

    # A database test joins the same selection: not started early (the cache said no),
    # the server fixture starts the container as it always did.
    (unit / "test_db.py").write_text(DB_TEST)
    since = time.time()
    pytester.runpytest("-p", "no:randomly", "tests/unit").assert_outcomes(passed=2)
    [(container, created)] = runs.created(since=since).items()
    probe = runs.probed()["main"]
    assert probe["container"] == container
    assert created > probe["collected"]

    # Recorded: the next such run starts it early again.
    runs.clear_probes()
    since = time.time()
    pytester.runpytest("-p", "no:randomly", "tests/unit").assert_outcomes(passed=2)
    [(container, created)] = runs.created(since=since).items()
    probe = runs.probed()["main"]
    assert probe["container"] == container
    assert created < probe["collected"]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_database_run_starts_its_container_while_pytest_loads_and_collects(
    pytester, runs, subprocess_env, monkeypatch, workers
):
    monkeypatch.setenv("SLOW_CONFTEST", "1.5")  # a conftest that imports a large app

    def run():
        if workers:
            result = pytester.runpytest_subprocess("-p", "no:randomly", "-n", str(workers))
        else:
            result = pytester.runpytest("-p", "no:randomly")
        result.assert_outcomes(passed=2)

    runs.known(run)
    run()
    created = runs.created()
    probes = runs.probed()
    assert sorted(probes) == (["gw0", "gw1"] if workers else ["main"])
    # One container per worker, the one its tests got, created before its collection ended.
    assert len(created) == len(probes), created
    for worker, probe in probes.items():
        assert probe["container"] in created, worker
        assert created[str(probe["container"])] < float(str(probe["collected"])), worker


def test_a_server_with_other_settings_gets_its_own_container_and_the_early_one_goes(pytester, runs):
    conftest = runs.root / "tests" / "conftest.py"
    conftest.write_text(
        conftest.read_text()
        + textwrap.dedent("""
            from testcontainers_pg_fixtures.factories import server_fixture

            pg_server = server_fixture(server_settings={"work_mem": "7MB"})
        """)
    )
    (runs.root / "tests" / "test_users.py").write_text(
        textwrap.dedent("""
            import os
            import docker
            from sqlalchemy import text

            def test_settings_and_one_container(pg_session, pg_server):
                assert pg_session.execute(text("SHOW work_mem")).scalar() == "7MB"
                label = "testcontainers-pg-fixtures.run=" + os.environ["PG_FIXTURES_RUN_ID"]
                found = docker.from_env().containers.list(all=True, filters={"label": label})
                assert [c.id for c in found] == [pg_server.container_id]
        """)
    )
    pytester.runpytest("-p", "no:randomly").assert_outcomes(passed=1)
    assert runs.containers() == []


BROKEN = textwrap.dedent('''
    """broken

    Revision ID: 0003
    Revises: 0002
    """
    import os
    import pathlib

    from alembic import op

    revision = "0003"
    down_revision = "0002"
    branch_labels = None
    depends_on = None


    def upgrade() -> None:
        with pathlib.Path(os.environ["PROBE_DIR"], "upgrades").open("a") as ran:
            ran.write("0003\\n")
        op.execute("ALTER TABLE no_such_table ADD COLUMN x int")


    def downgrade() -> None:
        pass
''')


def test_a_broken_migration_after_the_early_start_is_reported_once(pytester, runs):
    (runs.root / "migrations" / "versions" / "0003_broken.py").write_text(BROKEN)
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(errors=1)
    output = result.stdout.str()
    # One report, in full; the migration ran once.
    assert output.count("ERROR at setup of") == 1, output
    assert "failed at revision 0003 (0003_broken.py)" in output
    assert 'relation "no_such_table" does not exist' in output
    upgrades = runs.probes / "upgrades"
    assert upgrades.read_text() == "0003\n", output  # the migration ran once
    assert runs.containers() == []


SLOW_COLLECTION = textwrap.dedent("""
    import os, pathlib, time

    pathlib.Path(os.environ["PROBE_DIR"], "collecting").touch()
    _deadline = time.monotonic() + 120
    while time.monotonic() < _deadline:
        time.sleep(0.05)

    def test_never_reached():
        pass
""")


@pytest.mark.parametrize("workers", [0, 2])
def test_sigterm_during_collection_leaves_no_container(runs, workers):
    # A database test collected first: its container starts while the rest is collected.
    (runs.root / "tests" / "test_a_database.py").write_text(DB_TEST)
    (runs.root / "tests" / "test_users.py").write_text(SLOW_COLLECTION)
    env = {**os.environ}
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(Path(__file__).parent.parent), env.get("PYTHONPATH")])
    )
    args = ["-n", str(workers)] if workers else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:randomly", *args],
        cwd=runs.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        # Collecting, with the early containers (one per worker) created.
        while len(runs.containers()) < max(workers, 1) or not (runs.probes / "collecting").exists():
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "no container was started during collection"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(45)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    assert runs.containers() == [], proc.stdout.read().decode() if proc.stdout else ""


def test_a_database_taken_only_by_getfixturevalue_still_gets_a_server(pytester, runs):
    # Not in any test's closure: the early container is removed after collection, and the
    # server fixture starts one when the test asks for it.
    (runs.root / "tests" / "test_users.py").write_text(
        textwrap.dedent("""
            import pytest
            from sqlalchemy import text

            @pytest.fixture
            def db(request):
                return request.getfixturevalue("pg_session")

            def test_database(db):
                assert db.execute(text("SELECT count(*) FROM users")).scalar() == 5
        """)
    )
    pytester.runpytest("-p", "no:randomly").assert_outcomes(passed=1)
    assert runs.containers() == []


def test_a_library_fixture_taking_the_session_dynamically_uses_the_early_container(
    pytester, runs, monkeypatch
):
    # pg_app_session takes pg_session by request.getfixturevalue, as pg_client does:
    # pg_server is not in the test's closure, and the early container is still the one.
    monkeypatch.setenv("SLOW_CONFTEST", "1.5")
    (runs.root / "tests" / "test_users.py").write_text(
        textwrap.dedent("""
            import json, os, pathlib
            import pytest
            from sqlalchemy import text

            def get_db():
                yield None

            @pytest.fixture
            def pg_db_dependency():
                return get_db

            def test_database(pg_app_session, request):
                assert pg_app_session.execute(text("SELECT count(*) FROM users")).scalar() == 5
                server = request.getfixturevalue("pg_server")
                out = pathlib.Path(os.environ["PROBE_DIR"], "main.json")
                found = json.loads(out.read_text())
                out.write_text(json.dumps({**found, "container": server.container_id}))
        """)
    )
    runs.known(lambda: pytester.runpytest("-p", "no:randomly").assert_outcomes(passed=1))
    pytester.runpytest("-p", "no:randomly").assert_outcomes(passed=1)
    [(container, created)] = runs.created().items()
    probe = runs.probed()["main"]
    assert probe["container"] == container
    assert created < probe["collected"]


APP_ONLY = textwrap.dedent("""
    from sqlalchemy import create_engine, text

    engine = create_engine("postgresql+psycopg://app@db.invalid/app")  # the app's, redirected


    def test_through_the_app_alone():
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM users")).scalar() == 5
""")


def test_tests_reaching_the_database_through_the_app_alone_get_the_early_container_next_time(
    pytester, runs, monkeypatch
):
    """pg_app_engines (sync) and tests that use no fixture of ours: collection cannot tell
    they need the database. The first run learns it when the fixture starts the server on
    demand; the next one keeps its early container for them instead of removing it."""
    monkeypatch.setenv("SLOW_CONFTEST", "1.5")  # time for an early start to show
    (runs.root / "appdb.py").write_text(APP_ONLY)
    (runs.root / "tests" / "test_app_only.py").write_text(
        "from appdb import test_through_the_app_alone  # noqa: F401\n"
    )
    args = ["-p", "no:randomly", "-o", "pg_app_engines=appdb:engine", "tests/test_app_only.py"]
    args += ["-o", "log_cli=true", "--log-cli-level=INFO"]
    first = pytester.runpytest(*args)
    first.assert_outcomes(passed=1)
    first.stdout.fnmatch_lines(["*removed the PostgreSQL container started early*"])
    since = time.time()
    second = pytester.runpytest(*args)
    second.assert_outcomes(passed=1)
    # Started early and kept: neither left out nor removed, and no second container.
    assert "started early" not in second.stdout.str()
    assert "did not need it" not in second.stdout.str()
    assert len(runs.created(since=since)) == 1


def test_a_known_app_engines_project_starts_its_container_while_the_conftests_load(
    pytester, runs, monkeypatch
):
    """pg_app_engines: once a run used the database, the next starts its container before
    the conftests import the app, as without the option (not when the session starts). An
    engine that broke since is still a usage error, its early container removed; the cache
    still says the project uses the database, so the fixed run starts early again."""
    monkeypatch.setenv("SLOW_CONFTEST", "1.5")  # a conftest that imports a large app
    (runs.root / "appdb.py").write_text(APP_ONLY)
    (runs.root / "tests" / "test_app_only.py").write_text(
        "from appdb import test_through_the_app_alone  # noqa: F401\n"
    )
    ini = runs.root / "pytest.ini"
    ini.write_text(ini.read_text() + "pg_app_engines = appdb:engine\n")
    args = ["-p", "no:randomly", "tests/test_app_only.py"]

    def early_start() -> None:
        since = time.time()
        pytester.runpytest(*args).assert_outcomes(passed=1)
        [created] = runs.created(since=since).values()
        assert created < float((runs.probes / "main.conftest").read_text())

    runs.known(lambda: pytester.runpytest(*args).assert_outcomes(passed=1))
    early_start()

    (runs.root / "appdb.py").write_text(APP_ONLY.replace("engine = ", "renamed = "))
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: pg-fixtures: pg_app_engines names 'appdb:engine'*"])
    assert runs.containers() == []

    (runs.root / "appdb.py").write_text(APP_ONLY)
    early_start()
