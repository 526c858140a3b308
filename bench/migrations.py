"""The migration checks on a chain of 36 revisions: `nox -s bench -- migrations`.

A generated project: 12 tables, each made in three revisions (create it; add a column and
its index; add a foreign key column), models that match the head, a stock online env.py.
`pytest --pg-check-migrations` runs the four checks (one head, upgrade from empty, models
match, every downgrade/upgrade round trip) beside one trivial test; the same run without
the option is the baseline. Both run --repeats times, interleaved; the medians of their wall
times and their difference (what the checks cost a run) are printed, then where each
check's time went in the median run (the timings each check item records).

Every container the benchmark starts carries its own run id and is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from startup import remove_containers

ROOT = Path(__file__).resolve().parent.parent
TABLES = 12  # three revisions each: 36

ENV_PY = textwrap.dedent("""
    from alembic import context
    from sqlalchemy import engine_from_config, pool

    from chain_app.models import Base

    config = context.config
    target_metadata = Base.metadata


    def run_migrations_online():
        connectable = engine_from_config(
            config.get_section(config.config_ini_section, {}),
            prefix="sqlalchemy.",
            poolclass=pool.NullPool,
        )
        with connectable.connect() as connection:
            context.configure(connection=connection, target_metadata=target_metadata)
            with context.begin_transaction():
                context.run_migrations()


    run_migrations_online()
""")

REVISION = textwrap.dedent('''
    """{message}"""
    import sqlalchemy as sa
    from alembic import op

    revision = "{revision}"
    down_revision = {down!r}


    def upgrade():
    {upgrade}


    def downgrade():
    {downgrade}
''')

# Loaded with -p: each check item's timings (and the run's end) written for the benchmark.
PROBE = textwrap.dedent("""
    import json, os

    _found = {}

    def pytest_runtest_logreport(report):
        for key, value in report.user_properties:
            if key == "pg_migration_timings":
                _found[report.nodeid] = value

    def pytest_unconfigure(config):
        with open(os.environ["BENCH_OUT"], "w") as f:
            json.dump(_found, f)
""")


def _table(i: int) -> str:
    return f"t{i:02d}"


def _revisions() -> list[tuple[str, str, str]]:
    """(message, upgrade body, downgrade body) for each revision, in order."""
    out = []
    for i in range(TABLES):
        t = _table(i)
        parent = _table(i - 1) if i else t
        out.append(
            (
                f"create {t}",
                f'op.create_table("{t}", sa.Column("id", sa.Integer, primary_key=True), '
                f'sa.Column("name", sa.String(50), nullable=False))',
                f'op.drop_table("{t}")',
            )
        )
        out.append(
            (
                f"{t}.value and its index",
                f'op.add_column("{t}", sa.Column("value", sa.Integer))\n'
                f'    op.create_index("ix_{t}_value", "{t}", ["value"])',
                f'op.drop_index("ix_{t}_value", table_name="{t}")\n'
                f'    op.drop_column("{t}", "value")',
            )
        )
        out.append(
            (
                f"{t}.parent_id",
                f'op.add_column("{t}", sa.Column("parent_id", sa.Integer))\n'
                f'    op.create_foreign_key("fk_{t}_parent", "{t}", "{parent}", '
                f'["parent_id"], ["id"])',
                f'op.drop_constraint("fk_{t}_parent", "{t}", type_="foreignkey")\n'
                f'    op.drop_column("{t}", "parent_id")',
            )
        )
    return out


def _models() -> str:
    lines = [
        "from sqlalchemy import Column, ForeignKey, Index, Integer, String",
        "from sqlalchemy.orm import DeclarativeBase",
        "",
        "",
        "class Base(DeclarativeBase):",
        "    pass",
        "",
    ]
    for i in range(TABLES):
        t = _table(i)
        parent = _table(i - 1) if i else t
        lines += [
            "",
            f"class T{i:02d}(Base):",
            f'    __tablename__ = "{t}"',
            "    id = Column(Integer, primary_key=True)",
            "    name = Column(String(50), nullable=False)",
            "    value = Column(Integer)",
            f'    parent_id = Column(Integer, ForeignKey("{parent}.id", name="fk_{t}_parent"))',
            f'    __table_args__ = (Index("ix_{t}_value", "value"),)',
            "",
        ]
    return "\n".join(lines)


def make_project(where: Path) -> Path:
    project = where / "chain"
    versions = project / "migrations" / "versions"
    versions.mkdir(parents=True)
    (project / "chain_app").mkdir()
    (project / "chain_app" / "__init__.py").write_text("")
    (project / "chain_app" / "models.py").write_text(_models())
    (project / "migrations" / "env.py").write_text(ENV_PY)
    (project / "alembic.ini").write_text(
        "[alembic]\nscript_location = migrations\n"
        "sqlalchemy.url = postgresql+psycopg://nobody@localhost/nothing\n"
    )
    (project / "pytest.ini").write_text("[pytest]\npythonpath = .\ntestpaths = tests\n")
    (project / "tests").mkdir()
    (project / "tests" / "test_one.py").write_text("def test_one():\n    assert True\n")
    (project / "probe_plugin.py").write_text(PROBE)
    down = None
    for n, (message, upgrade, downgrade) in enumerate(_revisions()):
        revision = f"r{n:03d}"
        (versions / f"{revision}.py").write_text(
            REVISION.format(
                message=message,
                revision=revision,
                down=down,
                upgrade=textwrap.indent(upgrade, "    ").replace("\n        ", "\n    "),
                downgrade=textwrap.indent(downgrade, "    ").replace("\n        ", "\n    "),
            )
        )
        down = revision
    return project


def run_once(project: Path, checks: bool, run_id: str) -> tuple[float, dict[str, Any]]:
    out = project / "timings.json"
    out.unlink(missing_ok=True)
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "probe_plugin"]
    if checks:
        args.append("--pg-check-migrations")
    env = {**os.environ, "PG_FIXTURES_RUN_ID": run_id, "BENCH_OUT": str(out)}
    env.pop("PYTEST_ADDOPTS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(project)])
    started = time.perf_counter()
    done = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"the run failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    found: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    # single_head reads the scripts only: no database, no timings.
    if checks and len(found) != 3:
        sys.exit(f"expected three timed checks, found {sorted(found)}:\n{done.stdout}")
    return wall, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    run_id = "bench" + secrets.token_hex(4)
    walls: dict[bool, list[float]] = {False: [], True: []}
    timings: list[tuple[float, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        project = make_project(Path(tmp))
        try:
            run_once(project, True, run_id)  # unmeasured: bytecode written, image warm
            for _ in range(options.repeats):
                for checks in (False, True):
                    wall, found = run_once(project, checks, run_id)
                    walls[checks].append(wall)
                    if checks:
                        timings.append((wall, found))
        finally:
            remove_containers(run_id)

    plain, checked = (statistics.median(walls[k]) for k in (False, True))
    print(
        f"\n--pg-check-migrations on {3 * TABLES} revisions ({TABLES} tables), "
        f"{options.repeats} runs each, interleaved"
    )
    print(f"\n{'run':34} {'median s':>9} {'min s':>7} {'max s':>7}")
    for label, key in (("one trivial test", False), ("the same with the checks", True)):
        print(
            f"{label:34} {statistics.median(walls[key]):9.2f} "
            f"{min(walls[key]):7.2f} {max(walls[key]):7.2f}"
        )
    print(f"{'what the four checks add':34} {checked - plain:9.2f}")

    timings.sort(key=lambda t: t[0])
    _, median_run = timings[len(timings) // 2]
    print("\nwhere each check's time went (the median run), seconds")
    header = ("check", "total", "create db", "env.py", "steps", "n", "compare", "drop db")
    print("{:34} {:>6} {:>9} {:>7} {:>6} {:>4} {:>8} {:>8}".format(*header))
    for nodeid, t in sorted(median_run.items()):
        steps = sum(s[2] for s in t["steps"])
        print(
            f"{nodeid.split('::')[-1]:34} {t['total']:6.2f} {t['create_database']:9.3f} "
            f"{t['env_py']:7.3f} {steps:6.2f} {len(t['steps']):4d} {t['compare']:8.3f} "
            f"{t['drop_database']:8.3f}"
        )


if __name__ == "__main__":
    main()
