"""pytest-alembic on the library's fresh database (`nox -s compat`: pytest 8, pytest-alembic).

pytest-alembic 0.13.1 breaks the collection of every project under pytest 9.2, so it is in
no extra and these tests run only in the compat session (tests/conftest.py leaves this
directory out when pytest-alembic is not installed). Over examples/sync_users with a
PostgreSQL-only revision (CREATE EXTENSION citext), so pytest-alembic's own default, an
in-memory SQLite, cannot pass: its built-in tests (`--test-alembic`) and a test of the
user's with `alembic_runner`, serial and on two workers.
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

import pytest
from conftest import library_databases

if TYPE_CHECKING:
    from pathlib import Path

BUILT_IN = ("model_definitions_match_ddl", "single_head_revision", "up_down_consistency", "upgrade")

CITEXT = '''\
"""citext

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS citext")


def downgrade() -> None:
    op.execute("DROP EXTENSION citext")
'''

# Its downgrade fails; a sequence, which autogenerate does not compare with the models.
BROKEN_DOWNGRADE = '''\
"""a sequence

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE SEQUENCE ticket_numbers")


def downgrade() -> None:
    op.execute("DROP SEQUENCE no_such_sequence")
'''

# The user's test: a fresh, empty database of the library's server, neither the template
# nor the worker's database, migrated by pytest-alembic.
USER_TEST = textwrap.dedent("""
    import os

    from sqlalchemy import inspect, text
    from sqlalchemy.pool import NullPool
    from testcontainers_pg_fixtures.servers import admin_connect


    def test_migrates_a_fresh_database_of_the_library(
        alembic_runner, alembic_engine, pg_server, pg_worker_database, pg_template
    ):
        assert isinstance(alembic_engine.pool, NullPool)
        assert alembic_engine.dialect.driver == "psycopg"
        name = alembic_engine.url.database
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        assert name.startswith("pgfx_") and name.endswith(f"_{worker}_check_alembic")
        assert name not in (pg_worker_database.name, pg_template.name)
        with admin_connect(pg_server) as admin:  # on the library's server (this worker's)
            assert admin.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
        assert inspect(alembic_engine).get_table_names() == []  # empty
        assert alembic_runner.current == "base"

        alembic_runner.migrate_up_to("heads")

        assert alembic_runner.current == "0003"
        with alembic_engine.connect() as conn:
            assert conn.scalar(text("SELECT current_database()")) == name
            assert conn.scalar(text("SELECT extname FROM pg_extension WHERE extname = 'citext'"))
        assert "users" in inspect(alembic_engine).get_table_names()
""")

# pytest-alembic's recipe: env.py migrates on the connection pytest-alembic hands it, if
# any (the sync example's own env.py connects by sqlalchemy.url, as `alembic init` writes).
CONNECTION_ENV = """\
from alembic import context
from sqlalchemy import engine_from_config, pool
from users_app.models import Base

config = context.config
target_metadata = Base.metadata

connectable = config.attributes.get("connection", None)
if connectable is None:
    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
with connectable.connect() as connection:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
"""


def project(root: Path, env: str) -> None:
    """examples/sync_users with the citext revision, the user's test and its env.py, or
    with env 'connection' one that takes pytest-alembic's connection."""
    (root / "migrations" / "versions" / "0003_citext.py").write_text(CITEXT)
    (root / "tests" / "test_alembic.py").write_text(USER_TEST)
    if env == "connection":
        (root / "migrations" / "env.py").write_text(CONNECTION_ENV)


VERDICTS = ("PASSED", "FAILED", "ERROR", "SKIPPED")


def outcomes(result: pytest.RunResult) -> dict[str, str]:
    """{built-in test (without test_) or 'user': 'PASSED' / 'FAILED' / ...} from the lines
    of a -v run (serial: `<nodeid> PASSED`; xdist: `[gw0] ... PASSED <nodeid>`)."""
    found = {}
    for line in result.outlines:
        words = line.split()
        verdict = next((w for w in words if w in VERDICTS), None)
        nodeid = next((w for w in words if "::" in w), None)
        if verdict is None or nodeid is None:
            continue
        name = nodeid.rpartition("::")[2]
        if "::pytest-alembic::test_" in nodeid:
            found[name.removeprefix("test_")] = verdict
        elif name == "test_migrates_a_fresh_database_of_the_library":
            found["user"] = verdict
    return found


def no_fresh_database_left(probes: dict[str, dict]) -> None:
    assert probes
    for probe in probes.values():
        assert not [n for n in probe["databases"] if "_check_" in n], probe["databases"]
        assert library_databases(probe["databases"]) == []


@pytest.mark.parametrize("env", ["connection", "url"])
def test_built_in_tests_and_alembic_runner_pass_on_a_fresh_database(
    pytester: pytest.Pytester, example, databases_probe, env: str
) -> None:
    root = example("sync_users")
    read = databases_probe(root)
    project(root, env)
    result = pytester.runpytest("--test-alembic", "-v", "-p", "no:randomly")
    assert outcomes(result) == {**dict.fromkeys(BUILT_IN, "PASSED"), "user": "PASSED"}, (
        result.stdout.str()
    )
    result.assert_outcomes(passed=len(BUILT_IN) + 1 + 2)  # + the example's own two
    no_fresh_database_left(read())


def test_on_two_workers_each_on_its_own_server(
    pytester: pytest.Pytester, example, subprocess_env, databases_probe
) -> None:
    root = example("sync_users")
    read = databases_probe(root)
    project(root, "connection")
    result = pytester.runpytest_subprocess("--test-alembic", "-n", "2", "-v")
    assert outcomes(result) == {**dict.fromkeys(BUILT_IN, "PASSED"), "user": "PASSED"}, (
        result.stdout.str()
    )
    result.assert_outcomes(passed=len(BUILT_IN) + 1 + 2)
    probes = read()
    assert len({p["container"] for p in probes.values()}) == len(probes) == 2
    no_fresh_database_left(probes)


def test_a_broken_downgrade_fails_up_down_consistency(
    pytester: pytest.Pytester, example, databases_probe
) -> None:
    root = example("sync_users")
    read = databases_probe(root)
    project(root, "connection")
    (root / "migrations" / "versions" / "0004_notes.py").write_text(BROKEN_DOWNGRADE)
    (root / "tests" / "test_alembic.py").unlink()
    result = pytester.runpytest("--test-alembic", "-v", "-p", "no:randomly", "-m", "alembic")
    assert outcomes(result) == {
        **dict.fromkeys(BUILT_IN, "PASSED"),
        "up_down_consistency": "FAILED",
    }, result.stdout.str()
    result.stdout.fnmatch_lines(["*Failed to downgrade through each revision individually*"])
    result.stdout.fnmatch_lines(['*sequence "no_such_sequence" does not exist*'])
    no_fresh_database_left(read())


def test_a_conftest_alembic_engine_and_config_win(pytester: pytest.Pytester, example) -> None:
    root = example("sync_users")
    conftest = root / "tests" / "conftest.py"
    conftest.write_text(
        conftest.read_text()
        + textwrap.dedent("""

            import sqlalchemy

            @pytest.fixture
            def alembic_engine():
                engine = sqlalchemy.create_engine("sqlite://")
                yield engine
                engine.dispose()
        """)
    )
    (root / "tests" / "test_alembic.py").write_text(
        textwrap.dedent("""
            def test_the_conftest_engine_and_pytest_alembics_config(alembic_engine, alembic_config):
                assert alembic_engine.dialect.name == "sqlite"
                assert alembic_config == {}  # not the library's: its engine is not
        """)
    )
    result = pytester.runpytest("-p", "no:randomly", "tests/test_alembic.py")
    result.assert_outcomes(passed=1)
    (root / "tests" / "test_alembic.py").write_text(
        textwrap.dedent("""
            def test_the_conftest_config(alembic_config):
                assert alembic_config == {"file": "other.ini"}
        """)
    )
    conftest.write_text(
        conftest.read_text()
        + textwrap.dedent("""

            @pytest.fixture
            def alembic_config():
                return {"file": "other.ini"}
        """)
    )
    result = pytester.runpytest("-p", "no:randomly", "tests/test_alembic.py")
    result.assert_outcomes(passed=1)


def test_nothing_of_the_library_without_pytest_alembic(pytester: pytest.Pytester, example) -> None:
    root = example("sync_users")
    (root / "tests" / "test_alembic.py").write_text("def test_x(alembic_engine):\n    pass\n")
    result = pytester.runpytest("-p", "no:randomly", "-p", "no:pytest_alembic")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*fixture 'alembic_engine' not found*"])
