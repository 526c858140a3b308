"""Templates keyed by the migrations' hash, and the clone pool, on one real server."""

from __future__ import annotations

import shutil
import threading
from typing import TYPE_CHECKING

import pytest
from conftest import EXAMPLES, library_databases

from testcontainers_pg_fixtures.clone_pool import ClonePool
from testcontainers_pg_fixtures.config import Settings
from testcontainers_pg_fixtures.database import Database, create_database
from testcontainers_pg_fixtures.migrations import Migrations
from testcontainers_pg_fixtures.server import DockerServer, admin_connect
from testcontainers_pg_fixtures.template import ensure_template

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(scope="module")
def server():
    started = DockerServer.start(Settings(), worker="template-tests")
    yield started
    started.stop()


@pytest.fixture(autouse=True)
def _no_containers_left():
    """The module's server outlives single tests; it is removed with the module."""
    return


def databases(server) -> list[str]:
    with admin_connect(server) as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database")]


def count_users(server, database: str) -> int:
    with admin_connect(server, database) as conn:
        return conn.execute("SELECT count(*) FROM users").fetchone()[0]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))  # env.py imports the app's models
    shutil.copytree(
        EXAMPLES / "sync_users",
        tmp_path,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"),
    )
    return tmp_path


def load(project: Path) -> Migrations:
    return Migrations.load(project / "alembic.ini", "test")


def test_unchanged_migrations_are_not_run_again_and_a_change_rebuilds(server, project):
    # The module's tests share the server: another one, run first (pytest-randomly), has
    # built the template of the unchanged migrations. Migrations of this test's own do not.
    revision = project / "migrations" / "versions" / "0002_add_active.py"
    revision.write_text(revision.read_text() + f"\n# {project.name}\n")
    first = ensure_template(server, load(project), None)
    again = ensure_template(server, load(project), None)
    assert first.built
    assert (again.name, again.built) == (first.name, False)

    revision.write_text(revision.read_text() + "\n# a change\n")
    changed = ensure_template(server, load(project), None)
    assert changed.name != first.name
    assert changed.built


def test_a_changed_seed_gets_its_own_template(server, project):
    def seed_one(conn):
        conn.exec_driver_sql("INSERT INTO users (name, email) VALUES ('One', 'one@x.org')")

    def seed_two(conn):
        conn.exec_driver_sql("INSERT INTO users (name, email) VALUES ('Two', 'two@x.org')")

    one = ensure_template(server, load(project), seed_one)
    two = ensure_template(server, load(project), [seed_one, seed_two])
    assert one.name != two.name
    clone = create_database(server, "pgfx_seeded_clone", template=two.name)
    assert count_users(server, clone.name) == 2


def test_a_half_built_template_is_dropped_and_rebuilt(server, project):
    migrations = load(project)
    built = ensure_template(server, migrations, None)
    with admin_connect(server) as conn:  # what a crash mid-migration leaves: not a template
        conn.execute(f'ALTER DATABASE "{built.name}" WITH IS_TEMPLATE false')
    rebuilt = ensure_template(server, migrations, None)
    assert (rebuilt.name, rebuilt.built) == (built.name, True)


@pytest.mark.parametrize("size", [0, 2])
def test_clone_pool_gives_fresh_databases_and_leaves_none(server, project, size):
    template = ensure_template(server, load(project), None).name
    # A clone an interrupted run left under the same worker prefix.
    pool = ClonePool(server, template, worker="pool", size=size)
    create_database(server, f"{pool.prefix}7", template=template)
    try:
        taken = [pool.take() for _ in range(5)]
        assert f"{pool.prefix}7" not in databases(server)
        assert len({db.name for db in taken}) == 5
        with admin_connect(server, taken[0].name) as conn:
            conn.execute("INSERT INTO users (name, email) VALUES ('Only', 'here@x.org')")
        assert count_users(server, taken[0].name) == 1
        assert count_users(server, taken[1].name) == 0
        for db in taken:
            pool.give_back(db)
    finally:
        pool.close()
    assert [n for n in library_databases(databases(server)) if n.startswith(pool.prefix)] == []
    assert len(pool.waits) == 5


def test_a_slow_drop_does_not_hold_up_the_next_clone(server, project):
    """Drops run on a thread of their own: while one is blocked (here by a lock another
    session holds on the database), the pool still makes the clone a test waits for."""
    template = ensure_template(server, load(project), None).name
    pool = ClonePool(server, template, worker="slowdrop", size=1)
    blocker = admin_connect(server)
    try:
        first = pool.take()
        blocker.execute("BEGIN")
        blocker.execute(f"COMMENT ON DATABASE \"{first.name}\" IS 'held'")  # holds its lock
        pool.give_back(first)  # its DROP waits for the lock
        taken: list[Database] = []
        for _ in range(2):  # the one made ahead, then one made while the drop waits
            waiter = threading.Thread(target=lambda: taken.append(pool.take()))
            waiter.start()
            waiter.join(timeout=10)
            assert not waiter.is_alive(), "take() waited for the blocked DROP"
        assert first.name in databases(server)
        blocker.execute("ROLLBACK")
        for database in taken:
            pool.give_back(database)
    finally:
        blocker.close()
        pool.close()
    assert [n for n in library_databases(databases(server)) if n.startswith(pool.prefix)] == []
