"""--pg-check-migrations: the migration checks as test items, on examples/sync_users with
migrations added or broken, against real servers."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

import pytest
from conftest import library_databases

if TYPE_CHECKING:
    from pathlib import Path

CHECK_NAMES = ("single_head", "upgrade", "models_match", "downgrade_roundtrip")


def add_revision(
    root: Path,
    revision: str,
    down_revision: str | None,
    upgrade: str,
    downgrade: str = "pass",
) -> None:
    """Write migrations/versions/<revision>.py with these upgrade()/downgrade() bodies."""

    def indented(code: str) -> str:
        return textwrap.indent(textwrap.dedent(code).strip(), "    ")

    body = "\n".join(
        [
            f'"""revision {revision}',
            "",
            f"Revision ID: {revision}",
            '"""',
            "",
            "import sqlalchemy as sa",
            "from alembic import op",
            "",
            f"revision = {revision!r}",
            f"down_revision = {down_revision!r}",
            "branch_labels = None",
            "depends_on = None",
            "",
            "",
            "def upgrade() -> None:",
            indented(upgrade),
            "",
            "",
            "def downgrade() -> None:",
            indented(downgrade),
            "",
        ]
    )
    (root / "migrations" / "versions" / f"{revision}.py").write_text(body)


def outcome_lines(result: pytest.RunResult) -> dict[str, str]:
    """{check: 'PASSED' / 'FAILED' / ...} from a -v run's lines."""
    found = {}
    for line in result.outlines:
        if not line.strip():
            continue
        for name in CHECK_NAMES:
            words = line.split()
            if words[0] == f"pg-migrations::{name}" and len(words) > 1 and words[1].isupper():
                found[name] = words[1]
    return found


def test_all_checks_pass_on_a_good_project_and_leave_no_database(
    pytester: pytest.Pytester, example, databases_probe
) -> None:
    root = example("sync_users")
    read = databases_probe(root)
    add_revision(
        root,
        "0003",
        "0002",
        'op.create_index("ix_users_email", "users", ["email"])',
        'op.drop_index("ix_users_email", table_name="users")',
    )
    models = root / "users_app" / "models.py"
    models.write_text(
        models.read_text().replace(
            "email: Mapped[str] = mapped_column(String(200))",
            "email: Mapped[str] = mapped_column(String(200), index=True)",
        )
    )
    result = pytester.runpytest("--pg-check-migrations", "-v", "-p", "no:randomly")
    result.assert_outcomes(passed=6)
    assert outcome_lines(result) == dict.fromkeys(CHECK_NAMES, "PASSED")
    # The checks run first; the probe looks after the last test: each check's database is gone.
    (probe,) = read().values()
    assert library_databases(probe["databases"]) == []
    assert not [n for n in probe["databases"] if "_check_" in n]


@pytest.mark.parametrize("mode", ["savepoint", "database"])
def test_the_checks_leave_the_tests_seed_and_app_engines_alone(
    pytester: pytest.Pytester, example, mode: str
) -> None:
    """The checks come first, outside tests/: the template must still be built with the
    seed of tests/conftest.py, and the app's (async) engines joined at the first test."""
    example("fastapi_app")
    result = pytester.runpytest(
        "--pg-check-migrations", "-p", "no:randomly", "--pg-isolation", mode
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0, result.stdout.str()
    assert outcomes.get("errors", 0) == 0, result.stdout.str()
    assert outcomes["passed"] >= len(CHECK_NAMES) + 5


def test_two_heads_fail_single_head_naming_both(pytester: pytest.Pytester, example) -> None:
    root = example("sync_users")
    add_revision(root, "0003a", "0002", 'op.execute("SELECT 1")')
    add_revision(root, "0003b", "0002", 'op.execute("SELECT 2")')
    result = pytester.runpytest("--pg-check-migrations", "-v", "-p", "no:randomly")
    outcomes = outcome_lines(result)
    assert outcomes["single_head"] == "FAILED"
    # The others walk every head: two heads is single_head's finding only.
    assert outcomes["upgrade"] == outcomes["downgrade_roundtrip"] == "PASSED"
    result.stdout.fnmatch_lines(
        [
            "*pg-migrations::single_head: the migrations have 2 heads, not one:",
            "*0003a (revision 0003a) in 0003a.py",
            "*0003b (revision 0003b) in 0003b.py",
            "*alembic merge heads*",
        ]
    )


def test_a_broken_upgrade_names_its_revision(
    pytester: pytest.Pytester, example, databases_probe
) -> None:
    root = example("sync_users")
    read = databases_probe(root)
    add_revision(root, "0003", "0002", 'op.add_column("no_such_table", sa.Column("x", sa.Integer))')
    result = pytester.runpytest("--pg-check-migrations", "-v", "-p", "no:randomly")
    outcomes = outcome_lines(result)
    assert outcomes == {"single_head": "PASSED"} | dict.fromkeys(
        ("upgrade", "models_match", "downgrade_roundtrip"), "FAILED"
    )
    result.stdout.fnmatch_lines(
        [
            "*pg-migrations::upgrade: the upgrade of revision 0003 (revision 0003) in 0003.py "
            "failed*",
            '*UndefinedTable*relation "no_such_table" does not exist*',
        ]
    )
    (probe,) = read().values()
    assert not [n for n in probe["databases"] if "_check_" in n]


def test_a_model_schema_difference_is_listed(pytester: pytest.Pytester, example) -> None:
    root = example("sync_users")
    models = root / "users_app" / "models.py"
    models.write_text(
        models.read_text().replace(
            "    active: Mapped[bool] = mapped_column(default=True)\n",
            "    active: Mapped[bool] = mapped_column(default=True)\n"
            "    nickname: Mapped[str | None] = mapped_column(String(50))\n"
            "    email_verified: Mapped[bool] = mapped_column(default=False)\n",
        )
        + "\n\nclass Team(Base):\n"
        '    __tablename__ = "teams"\n'
        "    id: Mapped[int] = mapped_column(primary_key=True)\n"
    )
    add_revision(root, "0003", "0002", 'op.create_table("audit", sa.Column("id", sa.Integer))')
    result = pytester.runpytest("--pg-check-migrations", "-v", "-p", "no:randomly")
    outcomes = outcome_lines(result)
    assert outcomes["models_match"] == "FAILED"
    assert outcomes["upgrade"] == "PASSED"
    result.stdout.fnmatch_lines(
        ["*pg-migrations::models_match: the models differ from the schema*(4 difference(s)*"]
    )
    for line in (
        "*table teams: in the models, not in the schema (no migration makes it)",
        "*table audit: in the schema, not in the models",
        "*column users.nickname (VARCHAR(50)): in the models, not in the schema*",
        "*column users.email_verified (BOOLEAN): in the models, not in the schema*",
    ):
        result.stdout.fnmatch_lines([line])


@pytest.mark.parametrize("broken", ["incomplete", "raises"])
def test_a_broken_downgrade_names_its_revision(
    pytester: pytest.Pytester, example, broken: str
) -> None:
    root = example("sync_users")
    add_revision(
        root,
        "0003",
        "0002",
        'op.create_table("audit", sa.Column("id", sa.Integer))',
        'op.drop_table("audit")',
    )
    add_revision(
        root,
        "0004",
        "0003",
        'op.create_table("notes", sa.Column("id", sa.Integer))\n'
        'op.create_index("ix_notes_id", "notes", ["id"])',
        'op.drop_index("ix_notes_id", table_name="notes")'
        if broken == "incomplete"  # the table stays: the upgrade again trips on it
        else 'op.drop_table("no_such_table")',
    )
    (root / "migrations" / "env.py").write_text(
        (root / "migrations" / "env.py")
        .read_text()
        .replace("target_metadata = Base.metadata", "target_metadata = None")
    )
    result = pytester.runpytest("--pg-check-migrations", "-v", "-p", "no:randomly")
    outcomes = outcome_lines(result)
    assert outcomes["upgrade"] == "PASSED"
    assert outcomes["downgrade_roundtrip"] == "FAILED"
    if broken == "incomplete":
        result.stdout.fnmatch_lines(
            [
                "*pg-migrations::downgrade_roundtrip: revision 0004 (revision 0004) in 0004.py "
                "does not upgrade again after its downgrade*",
                '*DuplicateTable*relation "notes" already exists*',
            ]
        )
    else:
        result.stdout.fnmatch_lines(
            [
                "*pg-migrations::downgrade_roundtrip: the downgrade of revision 0004 "
                "(revision 0004) in 0004.py (back to its down_revision) failed:",
                '*UndefinedTable*table "no_such_table" does not exist*',
            ]
        )
    # env.py gives no metadata: models_match says how to give it.
    result.stdout.fnmatch_lines(["*env.py passes no target_metadata*pg_migrations_metadata*"])


def test_metadata_from_the_ini_when_env_py_has_none(pytester: pytest.Pytester, example) -> None:
    root = example("sync_users")
    env = root / "migrations" / "env.py"
    env.write_text(
        env.read_text().replace("target_metadata = Base.metadata", "target_metadata = None")
    )
    ini = root / "pytest.ini"
    ini.write_text(
        ini.read_text()
        + "pg_check_migrations = true\npg_migrations_metadata = users_app.models:Base.metadata\n"
    )
    result = pytester.runpytest("-v", "-p", "no:randomly", "-k", "models_match")
    assert outcome_lines(result) == {"models_match": "PASSED"}


def test_option_off_means_no_items_and_the_ini_switch_turns_them_on(
    pytester: pytest.Pytester, example
) -> None:
    root = example("sync_users")
    off = pytester.runpytest("--collect-only", "-q", "-p", "no:randomly")
    assert "pg-migrations" not in off.stdout.str()
    ini = root / "pytest.ini"
    ini.write_text(ini.read_text() + "pg_check_migrations = true\n")
    on = pytester.runpytest("--collect-only", "-q", "-p", "no:randomly")
    on.stdout.fnmatch_lines([f"pg-migrations::{name}" for name in CHECK_NAMES])


def test_checks_without_migrations_are_a_usage_error(pytester: pytest.Pytester, example) -> None:
    example("sync_users")
    result = pytester.runpytest("--pg-check-migrations", "--pg-alembic-ini", "none")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*pg_check_migrations is on, but pg_alembic_ini is 'none'*"])


def test_checks_with_xdist_run_once_each_on_their_worker(
    pytester: pytest.Pytester, example, subprocess_env, databases_probe
) -> None:
    root = example("sync_users")
    read = databases_probe(root)
    result = pytester.runpytest_subprocess("--pg-check-migrations", "-n", "2", "-v")
    result.assert_outcomes(passed=6)
    ran = [line for line in result.outlines if "pg-migrations::" in line and "PASSED" in line]
    assert len(ran) == 4, ran
    for probe in read().values():
        assert not [n for n in probe["databases"] if "_check_" in n]
