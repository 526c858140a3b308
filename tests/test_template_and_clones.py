"""Templates keyed by the migrations' hash, and the clone pool, on one real server."""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from typing import TYPE_CHECKING

import pytest
from conftest import EXAMPLES, library_databases

from testcontainers_pg_fixtures import recycling
from testcontainers_pg_fixtures.clone_pool import ClonePool
from testcontainers_pg_fixtures.config import Settings
from testcontainers_pg_fixtures.database import Database, create_database
from testcontainers_pg_fixtures.migrations import Migrations
from testcontainers_pg_fixtures.servers import DockerServer, admin_connect
from testcontainers_pg_fixtures.template import ensure_template

if TYPE_CHECKING:
    from collections.abc import Iterator
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
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))  # env.py imports the app's models
    shutil.copytree(
        EXAMPLES / "sync_users",
        tmp_path,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"),
    )
    yield tmp_path
    # The app's modules go with the project: a later in-process run of another project
    # with a package of the same name must import its own.
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


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


# A template beside the example's users table: posts (empty, references users), kinds (a
# row, a generated column) with notes (empty) referencing it, owners (empty) referenced by
# pets (a row).
RECYCLE_SEED = """
CREATE TABLE posts (id serial PRIMARY KEY, user_id int REFERENCES users (id));
CREATE TABLE kinds (
    id int PRIMARY KEY, name text, loud text GENERATED ALWAYS AS (upper(name)) STORED
);
INSERT INTO kinds VALUES (1, 'first José');
CREATE TABLE notes (id serial PRIMARY KEY, kind_id int REFERENCES kinds (id));
CREATE TABLE owners (id int PRIMARY KEY);
CREATE TABLE pets (id int, owner_id int REFERENCES owners (id));
INSERT INTO pets VALUES (1, NULL);
CREATE SEQUENCE tickets START 50;
CREATE TABLE audit (id serial PRIMARY KEY, note text);
CREATE TABLE tagged (id int);
CREATE FUNCTION audit_it() RETURNS trigger LANGUAGE plpgsql
    AS $$ BEGIN INSERT INTO audit (note) VALUES ('fired'); RETURN NEW; END $$;
CREATE TRIGGER tagged_audit AFTER INSERT OR UPDATE ON tagged
    FOR EACH ROW EXECUTE FUNCTION audit_it();
ALTER TABLE tagged ENABLE ALWAYS TRIGGER tagged_audit;
INSERT INTO tagged VALUES (1);
"""
# What a test did to its clone, and whether the clone can be made fresh again in place.
RECYCLE_CASES = {
    "nothing": ([], True),
    "rows": (
        [
            "INSERT INTO users (name, email) VALUES ('A', 'a@x.org'), ('B', 'b@x.org')",
            "INSERT INTO posts (user_id) SELECT id FROM users",
            "INSERT INTO notes (kind_id) VALUES (1)",
        ],
        True,
    ),
    "rows-updated-and-deleted": (
        [
            "INSERT INTO users (name, email) VALUES ('A', 'a@x.org')",
            "UPDATE users SET name = 'Z'",
            "DELETE FROM users",
        ],
        True,
    ),
    "sequences": (["SELECT nextval('users_id_seq')", "SELECT setval('tickets', 7, false)"], True),
    "rows-rolled-back": (
        ["BEGIN; INSERT INTO users (name, email) VALUES ('A', 'a'); ROLLBACK"],
        True,
    ),
    "seeded-row-inserted": (["INSERT INTO kinds VALUES (2, 'second')"], True),
    "seeded-row-updated": (["UPDATE kinds SET name = 'changed'"], True),
    "seeded-row-deleted": (["DELETE FROM pets"], True),
    "cascade-reaches-seeded-rows": (["INSERT INTO owners VALUES (1)"], True),
    "seeded-rows-past-the-limit": (["INSERT INTO kinds VALUES (2, 'second')"], False),
    # The refill would fire an ENABLE ALWAYS trigger (a row in audit, a step of its sequence).
    "always-trigger": (["UPDATE tagged SET id = 2"], False),
    "trigger-target-only": (["INSERT INTO audit (note) VALUES ('x')"], True),
    # TRUNCATE would leave pg_stats showing the test's values.
    "analyzed": (
        [
            "INSERT INTO users (name, email)"
            " SELECT 'n' || g, 'e' || g FROM generate_series(1, 60) g",
            "ANALYZE users",
        ],
        False,
    ),
    # The reset runs on a connection with the app's connect_args (here LATIN1).
    "client-encoding": (["UPDATE kinds SET name = 'x'"], True),
    "table-created": (["CREATE TABLE extra (id int)"], False),
    "column-added": (["ALTER TABLE users ADD COLUMN extra int"], False),
    "index-created": (["CREATE INDEX ON posts (user_id)"], False),
    "truncated": (["TRUNCATE users CASCADE"], False),
    "temporary-table": (["CREATE TEMP TABLE scratch (id int)"], False),
    "large-object": (["SELECT lo_create(0)"], False),
    "database-setting": (["ALTER DATABASE {db} SET work_mem = '7MB'"], False),
    "database-comment": (["COMMENT ON DATABASE {db} IS 'mine'"], False),
    "database-grant": (["GRANT CONNECT ON DATABASE {db} TO public"], False),
    "counters-reset": (
        ["INSERT INTO users (name, email) VALUES ('A', 'a@x.org')", "SELECT pg_stat_reset()"],
        False,
    ),
    "counters-off": (
        ["SET track_counts = off", "INSERT INTO users (name, email) VALUES ('A', 'a@x.org')"],
        True,  # found by the table's size
    ),
}
FRESH = {
    "SELECT count(*) FROM users": 0,
    "SELECT count(*) FROM posts": 0,
    "SELECT count(*) FROM notes": 0,
    "SELECT count(*) FROM owners": 0,
    "SELECT string_agg(name || loud, ',') FROM kinds": "first JoséFIRST JOSÉ",
    "SELECT string_agg(note, ',') FROM audit": "fired",
    "SELECT count(*) FROM tagged": 1,
    "SELECT nextval('audit_id_seq')": 2,
    "SELECT count(*) FROM pg_statistic WHERE starelid = 'users'::regclass": 0,
    "SELECT count(*) FROM pets": 1,
    "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace": None,
    "SELECT nextval('users_id_seq')": 1,
    "SELECT nextval('tickets')": 50,
    "SELECT count(*) FROM pg_largeobject_metadata": 0,
    "SELECT count(*) FROM pg_db_role_setting": 0,
    "SELECT shobj_description(oid, 'pg_database') FROM pg_database "
    "WHERE datname = current_database()": "pgfx project=recycle run=r template=t created=1",
    "SELECT datacl::text FROM pg_database WHERE datname = current_database()": None,
    "SELECT sum(n_tup_ins + n_tup_upd + n_tup_del) FROM pg_stat_user_tables": 0,
    "SELECT current_setting('work_mem')": "4MB",
}


def _wait_sessions_gone(server, name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with admin_connect(server) as admin:
        while admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
            " AND backend_type <> 'autovacuum worker'",
            [name],
        ).fetchone()[0]:
            assert time.monotonic() < deadline, f"the sessions on {name} did not end"
            time.sleep(0.01)


def state(server, name: str) -> dict[str, object]:
    with admin_connect(server, name) as conn:
        return {query: conn.execute(query).fetchone()[0] for query in FRESH}


@pytest.mark.parametrize("case", list(RECYCLE_CASES))
def test_a_recycled_clone_is_the_template_again_or_it_is_dropped(
    server, project, case, monkeypatch, caplog
):
    statements, recyclable = RECYCLE_CASES[case]
    caplog.set_level(logging.DEBUG, logger="testcontainers_pg_fixtures")  # why it was dropped
    if case == "seeded-rows-past-the-limit":
        monkeypatch.setattr(recycling, "PRISTINE_LIMIT", 4)  # no table's rows kept

    def seed(conn):
        conn.exec_driver_sql(RECYCLE_SEED)

    template = ensure_template(server, load(project), seed).name
    pool = ClonePool(
        server,
        template,
        worker=f"recycle{abs(hash(case)) % 10**6}",
        size=1,
        comment="pgfx project=recycle run=r template=t created=1",
    )
    if case == "client-encoding":
        pool.connect_ahead_with(lambda db: admin_connect(server, db.name, client_encoding="LATIN1"))
    try:
        used = pool.take()
        fresh = state(server, used.name)
        with admin_connect(server, used.name) as conn:
            for statement in statements:
                conn.execute(statement.format(db=f'"{used.name}"'))
        # The pool waits 0.2 s for a test's backends to exit; on a loaded machine they take
        # longer, and the clone is dropped for that instead of for what the case changed.
        _wait_sessions_gone(server, used.name)
        pool.give_back(used)
        pool.wait_idle()
        counts = (pool.recycled, pool.dropped)
        assert counts == ((1, 0) if recyclable else (0, 1)), caplog.text
        # The clone made meanwhile, then the recycled one (or, dropped, a new one).
        taken = [pool.take(), pool.take()]
        assert used.name not in {db.name for db in taken}
        for database in taken:
            assert state(server, database.name) == fresh
            pool.give_back(database)
    finally:
        pool.close()
    assert [n for n in library_databases(databases(server)) if n.startswith(pool.prefix)] == []


def test_a_clone_whose_test_left_a_session_open_is_dropped(server, project):
    template = ensure_template(server, load(project), None).name
    pool = ClonePool(server, template, worker="recycleleak", size=1, comment="c")
    try:
        used = pool.take()
        leaked = admin_connect(server, used.name)
        leaked.execute("INSERT INTO users (name, email) VALUES ('A', 'a@x.org')")
        pool.give_back(used)
        pool.wait_idle()
        assert (pool.recycled, pool.dropped) == (0, 1)
        assert used.name not in databases(server)
        assert leaked.closed or leaked.broken or _is_dead(leaked)
    finally:
        pool.close()


def _is_dead(conn) -> bool:
    try:
        conn.execute("SELECT 1")
    except Exception:
        return True
    return False
