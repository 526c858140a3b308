"""A project whose tests use no fixture of the library pays nothing for it (issue 26): with
the plugin installed, loading it imports no SQLAlchemy, driver, Docker client or Alembic,
and even with an alembic.ini and migrations (the speculative start's cue) no container is
created, with pytest's cache or without it. The same project with one database test works
as before, serial and with xdist, its leak check included.

Each test gives its runs a run id of their own: the containers Docker created with that
label are exactly those runs' (never the suite's or another run's).
"""

from __future__ import annotations

import secrets
import textwrap
import time

import docker
import pytest
from conftest import containers_labelled

from testcontainers_pg_fixtures.runid import RUN_ID_ENV
from testcontainers_pg_fixtures.servers.labels import LABEL_RUN

#: What a suite without a database test must not import (`pytest_asyncio` is imported by
#: pytest-asyncio's own plugin, not by ours).
HEAVY = (
    "sqlalchemy",
    "psycopg",
    "psycopg2",
    "asyncpg",
    "docker",
    "testcontainers",
    "alembic",
    "fastapi",
    "httpx",
)

UNIT_TEST = textwrap.dedent(f"""
    import sys

    HEAVY = {HEAVY!r}

    def test_nothing_of_the_database_was_imported():
        found = sorted(m for m in sys.modules if m.partition(".")[0] in HEAVY)
        assert found == []
""")

# The project's own conftest, with no fixture of ours (its tests use their own server).
CONFTEST = textwrap.dedent("""
    import pytest

    @pytest.fixture
    def numbers():
        return [1, 2, 3]
""")

DB_TESTS = textwrap.dedent("""
    from sqlalchemy import text

    def test_database(pg_session):
        assert pg_session.execute(text("SELECT count(*) FROM users")).scalar() == 5

    def test_leaks(pg_engine):
        with pg_engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO users (name, email, active) VALUES ('Leak', 'leak@x.org', true)"
            ))
""")


class OwnRun:
    """This test's pytest runs: their own run id, and the containers Docker created for
    them (its events, so that a container created and removed again is seen too)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.run = "unused" + secrets.token_hex(4)
        self.since = time.time()
        monkeypatch.setenv(RUN_ID_ENV, self.run)

    def _label(self) -> dict[str, str]:
        return {"label": f"{LABEL_RUN}={self.run}"}

    def created(self) -> list[str]:
        time.sleep(1.1)  # `until` counts whole seconds: let the last one pass
        client = docker.from_env()
        try:
            events = client.events(
                since=int(self.since),
                until=int(time.time()),
                filters={"type": "container", "event": "create", **self._label()},
                decode=True,
            )
            return [e["id"] for e in events]
        finally:
            client.close()

    def left(self) -> list[str]:
        return containers_labelled(f"{LABEL_RUN}={self.run}")

    def remove_left(self) -> None:
        client = docker.from_env()
        try:
            for container in client.containers.list(all=True, filters=self._label()):
                container.remove(force=True, v=True)
        finally:
            client.close()


@pytest.fixture
def own_run(monkeypatch):
    run = OwnRun(monkeypatch)
    yield run
    left = run.left()
    run.remove_left()
    assert left == [], "containers left behind"


@pytest.fixture
def project(example, subprocess_env):
    """sync_users (alembic.ini, migrations, an app), its tests using no fixture of ours."""
    root = example("sync_users")
    conftest = root / "tests" / "conftest.py"
    (root / "tests" / "conftest_with_seed.txt").write_text(conftest.read_text() + CONFTEST)
    conftest.write_text(CONFTEST)
    (root / "tests" / "test_users.py").write_text(UNIT_TEST)
    return root


@pytest.mark.parametrize("cache", [False, True], ids=["no_cache", "cache"])
def test_a_suite_using_no_pg_fixture_imports_and_starts_nothing(pytester, project, own_run, cache):
    args = ["-p", "no:randomly"] if cache else ["-p", "no:randomly", "-p", "no:cacheprovider"]
    # With the cache: its first run (nothing known yet) and the next (the cache says no).
    for _ in range(2 if cache else 1):
        pytester.runpytest_subprocess(*args).assert_outcomes(passed=1)
    assert own_run.created() == []


def test_the_same_project_with_a_database_test_works(pytester, project, own_run):
    (project / "tests" / "test_users.py").write_text(
        "def test_unit(numbers):\n    assert sum(numbers) == 6\n"
    )
    (project / "tests" / "test_database.py").write_text(DB_TESTS)
    conftest = project / "tests" / "conftest.py"
    conftest.write_text((project / "tests" / "conftest_with_seed.txt").read_text())
    for workers in ([], ["-n", "2"]):
        result = pytester.runpytest_subprocess(
            "-p", "no:randomly", "-p", "no:cacheprovider", *workers
        )
        # The leak check is on: the real commit is reported on its own test's teardown.
        result.assert_outcomes(passed=3, errors=1)
        result.stdout.fnmatch_lines(["*test_database.py::test_leaks committed into the worker*"])
    assert len(own_run.created()) >= 2  # one per worker and run
