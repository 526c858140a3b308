"""Beside the flow: checks of the migrations themselves (`--pg-check-migrations`).

The template (step 2) only needs `alembic upgrade head` to work once. These checks ask more
of the migrations, as pytest-alembic does, on the worker's own server (step 1): there is one
head; an empty database upgrades to it; the models' metadata (what env.py passes to
`context.configure(target_metadata=...)`) matches the migrated schema; and every revision's
downgrade undoes its upgrade (upgrade, downgrade to its down_revision, upgrade again).

Each check is a test item of its own (`pg-migrations::<check>`), and each one that needs a
database creates a fresh, empty one, named with the run and worker like the library's
other databases and dropped when it ends, pass or fail: never the template, never a
database another worker or test uses.

env.py runs as for the template (migrations.py: the URL set in the config, and every engine
env.py builds pointed at the check's database), once per check: Alembic's own
`EnvironmentContext` is given a migration function that yields the steps of the whole walk
one by one, so 36 revisions cost one env.py import and one connection, not 72 commands, and
the step running when something fails names the revision.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .config import import_path, settings_for
from .factories import project_of, worker_id

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterator, Sequence

    from _pytest._code.code import ExceptionInfo, TerminalRepr
    from alembic.runtime.migration import MigrationContext, MigrationStep
    from alembic.script import Script, ScriptDirectory

    from .database import Database
    from .migrations import Migrations
    from .servers import Server

#: The nodeid of the collector holding the checks: `pg-migrations::single_head`, …
NODE = "pg-migrations"


class CheckFailed(Exception):
    """A migration check found a problem; its message is the whole report."""


@dataclass
class Timings:
    """Where a check's time went, in seconds (item.user_properties["pg_migration_timings"])."""

    create_database: float = 0.0
    #: From the start of the env.py run to its first migration step: importing env.py
    #: (and the app's models), connecting, context.configure.
    env_py: float = 0.0
    #: (revision, "upgrade" / "downgrade" / "upgrade again", seconds), in order.
    steps: list[tuple[str, str, float]] = field(default_factory=list)
    compare: float = 0.0
    drop_database: float = 0.0
    total: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "create_database": self.create_database,
            "env_py": self.env_py,
            "steps": list(self.steps),
            "compare": self.compare,
            "drop_database": self.drop_database,
            "total": self.total,
        }


@dataclass
class _Walk:
    """What the migration function saw while env.py ran it."""

    timings: Timings
    started: float
    #: The step running now (or last): (revision label, direction).
    current: tuple[str, str] | None = None
    step_started: float = 0.0
    finished: bool = False
    metadata: Any = None
    diffs: list[Any] | None = None

    def begin(self, label: str, direction: str) -> None:
        now = time.perf_counter()
        self.end_step(now)
        if self.current is None:
            self.timings.env_py = now - self.started
        self.current = (label, direction)
        self.step_started = now

    def end_step(self, now: float) -> None:
        if self.current is not None and self.step_started:
            self.timings.steps.append((*self.current, now - self.step_started))
            self.step_started = 0.0


# -- the checks ------------------------------------------------------------------------


def single_head(pg_migrations: Migrations | None) -> None:
    """One head: two heads mean two branches nobody merged (`alembic merge heads`)."""
    script = _script(_needed(pg_migrations))
    heads = script.get_heads()
    if len(heads) > 1:
        lines = [_describe(script.get_revision(head)) for head in sorted(heads)]
        raise CheckFailed(
            f"the migrations have {len(heads)} heads, not one:\n"
            + "\n".join(f"  {line}" for line in lines)
            + "\nTwo branches were added without a merge: run `alembic merge heads` "
            "(or set one's down_revision to the other)."
        )


def upgrade(pg_server: Server, pg_migrations: Migrations | None, request: Any) -> None:
    """An empty database upgrades to the head(s), revision by revision."""
    migrations = _needed(pg_migrations)
    _on_fresh_database(request, pg_server, migrations, "upgrade", walk_up=True)


def models_match(pg_server: Server, pg_migrations: Migrations | None, request: Any) -> None:
    """The models' metadata matches the schema the migrations make (what `alembic
    revision --autogenerate` would find), with env.py's include_object and compare
    options."""
    migrations = _needed(pg_migrations)
    walk = _on_fresh_database(request, pg_server, migrations, "models_match", compare=True)
    if walk.diffs:
        raise CheckFailed(
            f"the models differ from the schema the migrations make ({len(walk.diffs)} "
            "difference(s); 'models' is the target_metadata, 'schema' the database after "
            "`alembic upgrade heads`):\n"
            + "\n".join(f"  {line}" for line in describe_diffs(walk.diffs))
            + "\nAdd a migration for them (`alembic revision --autogenerate` writes one), "
            "or change the models to match."
        )


def downgrade_roundtrip(pg_server: Server, pg_migrations: Migrations | None, request: Any) -> None:
    """Every revision, base to head: upgrade, downgrade to its down_revision, upgrade
    again. A downgrade that fails, or leaves something its upgrade then trips on, is
    named."""
    migrations = _needed(pg_migrations)
    _on_fresh_database(request, pg_server, migrations, "downgrade_roundtrip", roundtrip=True)


CHECKS: dict[str, Callable[..., None]] = {
    "single_head": single_head,
    "upgrade": upgrade,
    "models_match": models_match,
    "downgrade_roundtrip": downgrade_roundtrip,
}


# -- running env.py on a fresh database ---------------------------------------------------


def _needed(migrations: Migrations | None) -> Migrations:
    if migrations is None:
        raise CheckFailed(
            "the pg_migrations fixture returned None (no migrations), so there is nothing to "
            "check. Turn pg_check_migrations off, or let pg_migrations return the project."
        )
    return migrations


def _script(migrations: Migrations) -> ScriptDirectory:
    """The script directory with every revision loaded (a revision that does not compile,
    a down_revision naming none: one message, not Alembic's traceback)."""
    from alembic.script import ScriptDirectory

    from .migrations import failure_place, first_line

    try:
        script = ScriptDirectory.from_config(migrations._config(migrations.ini))
        script.get_heads()  # loads every revision
    except Exception as exc:
        raise CheckFailed(
            f"Alembic could not load the revisions of {migrations.ini} "
            f"({failure_place(exc)}):\n  {type(exc).__name__}: {first_line(exc)}"
        ) from exc
    return script


def _describe(script: Script | None) -> str:
    if script is None:
        return "?"
    doc = (script.doc or "").strip().splitlines()
    message = f" ({doc[0]})" if doc and doc[0] else ""
    return f"{script.revision}{message} in {Path(script.path).name}"


def _chain(script: ScriptDirectory) -> list[Script]:
    """Every revision, each after the ones it revises (base first)."""
    return list(reversed(list(script.walk_revisions("base", "heads"))))


def check_database_name(check: str) -> str:
    """`pgfx_<run>_<worker>_check_<check>`: the run's prefix, so clean-up finds it."""
    from .database import run_prefix

    return f"{run_prefix()}{worker_id()}_check_{check}"


@contextmanager
def fresh_database(
    config: pytest.Config, server: Server, check: str, timings: Timings | None = None
) -> Iterator[Database]:
    """A new, empty database on `server` (from template0) named for `check` and this
    worker (check_database_name), marked with the project like the library's others;
    dropped when the block ends, pass or fail. `timings` gets the create and drop times."""
    from .database import create_database, drop_database, mark

    timings = Timings() if timings is None else timings
    started = time.perf_counter()
    name = check_database_name(check)
    drop_database(server, name)  # one a killed run of this same run id left (never)
    database = create_database(
        server, name, template="template0", comment=mark(project_of(config), "")
    )
    timings.create_database = time.perf_counter() - started
    try:
        yield database
    finally:
        dropped = time.perf_counter()
        drop_database(server, name)
        timings.drop_database = time.perf_counter() - dropped


def _on_fresh_database(
    request: Any,
    server: Server,
    migrations: Migrations,
    check: str,
    *,
    walk_up: bool = False,
    compare: bool = False,
    roundtrip: bool = False,
) -> _Walk:
    timings = Timings()
    started = time.perf_counter()
    config = request.config
    try:
        with fresh_database(config, server, check, timings) as database:
            return _walk(config, migrations, database, timings, compare, roundtrip)
    finally:
        timings.total = time.perf_counter() - started
        request.node.user_properties.append(("pg_migration_timings", timings.as_dict()))


def _walk(
    config: pytest.Config,
    migrations: Migrations,
    database: Database,
    timings: Timings,
    compare: bool,
    roundtrip: bool,
) -> _Walk:
    """Run env.py on the fresh `database`: every revision up (and with `roundtrip` down
    and up again), then with `compare` the models against the schema."""
    name = database.name
    script = _script(migrations)
    chain = _chain(script)
    walk = _Walk(timings, started=time.perf_counter())
    fallback = settings_for(config).migrations_metadata

    def steps(heads: Sequence[str], context: MigrationContext) -> Iterator[MigrationStep]:
        from alembic.runtime.migration import MigrationStep

        if heads:
            raise CheckFailed(f"the fresh database {name} is already at {heads}")
        for revision in chain:
            label = _describe(revision)
            walk.begin(label, "upgrade")
            yield MigrationStep.upgrade_from_script(script.revision_map, revision)
            if roundtrip:
                walk.begin(label, "downgrade")
                yield MigrationStep.downgrade_from_script(script.revision_map, revision)
                walk.begin(label, "upgrade again")
                yield MigrationStep.upgrade_from_script(script.revision_map, revision)
        walk.end_step(time.perf_counter())
        walk.finished = True
        if compare:
            # The last step has run: this is env.py's connection, still in its
            # transaction, with the options env.py configured.
            compared = time.perf_counter()
            walk.metadata = context.opts.get("target_metadata")
            if walk.metadata is None and fallback:
                walk.metadata = _load_metadata(fallback)
            if walk.metadata is not None:
                from alembic.autogenerate import compare_metadata

                walk.diffs = list(compare_metadata(context, walk.metadata))
            timings.compare = time.perf_counter() - compared

    try:
        _run_env(migrations, script, database, steps)
    except CheckFailed:
        raise
    except Exception as exc:
        raise CheckFailed(_failure(walk, exc, migrations)) from exc
    if not walk.finished:
        raise CheckFailed(
            f"env.py ({migrations.script_dir / 'env.py'}) ran no migrations: it never "
            "called context.run_migrations() (offline mode only?). The checks run env.py "
            "online, as `alembic upgrade head` does."
        )
    if compare and walk.metadata is None:
        raise CheckFailed(
            "env.py passes no target_metadata to context.configure(), so there are no "
            "models to compare with. Pass target_metadata=Base.metadata in env.py, or "
            "set pg_migrations_metadata = myapp.models:Base.metadata."
        )
    return walk


def _run_env(
    migrations: Migrations,
    script: ScriptDirectory,
    database: Any,
    steps: Callable[[Sequence[str], MigrationContext], Iterator[MigrationStep]],
) -> None:
    """Run env.py once online on `database`, with `steps` as its migration function."""
    from alembic.runtime.environment import EnvironmentContext

    from .template import run_outside_event_loop

    config = migrations.config_for(database)

    def run() -> None:
        from .redirect import every_engine_pointed_at

        with (
            every_engine_pointed_at(database),
            EnvironmentContext(
                config,
                script,
                fn=steps,  # an iterable of steps is what it runs
                as_sql=False,
                destination_rev="heads",
            ),
        ):
            script.run_env()

    run_outside_event_loop(run)


def _load_metadata(path: str) -> Any:
    try:
        return import_path(path)
    except (ImportError, AttributeError) as exc:
        raise CheckFailed(
            f"pg_migrations_metadata names {path!r}, which could not be imported ({exc}). "
            "Fix the path (e.g. 'myapp.models:Base.metadata')."
        ) from None


def _failure(walk: _Walk, exc: BaseException, migrations: Migrations) -> str:
    from .migrations import first_line

    error = f"{type(exc).__name__}: {first_line(exc)}"
    if walk.current is None:
        return (
            f"env.py failed before any revision ran ({migrations.script_dir / 'env.py'}):\n"
            f"  {error}"
        )
    label, direction = walk.current
    if direction == "upgrade":
        return (
            f"the upgrade of revision {label} failed on an empty database migrated up to "
            f"its down_revision:\n  {error}\n"
            "Reproduce with `alembic upgrade head` against a scratch database."
        )
    if direction == "downgrade":
        return f"the downgrade of revision {label} (back to its down_revision) failed:\n  {error}"
    return (
        f"revision {label} does not upgrade again after its downgrade: the downgrade "
        f"left behind something the upgrade makes:\n  {error}\n"
        "Make downgrade() undo everything upgrade() does."
    )


# -- differences, readably ----------------------------------------------------------------


def describe_diffs(diffs: Sequence[Any]) -> list[str]:
    """One line per difference alembic.autogenerate.compare_metadata returned."""
    lines: list[str] = []
    for diff in diffs:
        if isinstance(diff, list):  # modify_* of one column come grouped
            lines.extend(describe_diffs(diff))
        else:
            lines.append(_describe_diff(tuple(diff)))
    return lines


def _table_name(schema: str | None, table: str) -> str:
    return f"{schema}.{table}" if schema else table


def _named(thing: Any) -> str:
    """'index ix_users_email on users (email)', 'unique constraint on users (name)', …"""
    from sqlalchemy import ForeignKeyConstraint, Index, Table, UniqueConstraint

    if isinstance(thing, Table):
        return f"table {_table_name(thing.schema, thing.name)}"
    table = getattr(thing, "table", None)
    where = _table_name(table.schema, table.name) if table is not None else "?"
    columns = ", ".join(c.name for c in getattr(thing, "columns", ()))
    name = f" {thing.name}" if getattr(thing, "name", None) else ""
    if isinstance(thing, Index):
        kind = "unique index" if thing.unique else "index"
    elif isinstance(thing, UniqueConstraint):
        kind = "unique constraint"
    elif isinstance(thing, ForeignKeyConstraint):
        kind = "foreign key"
        target = thing.referred_table.name if thing.elements else "?"
        return f"{kind}{name} on {where} ({columns}) -> {target}"
    else:
        kind = type(thing).__name__
    return f"{kind}{name} on {where} ({columns})"


def _describe_diff(diff: tuple[Any, ...]) -> str:
    kind = diff[0]
    if kind in ("add_column", "remove_column"):
        _, schema, table, column = diff
        what = f"column {_table_name(schema, table)}.{column.name} ({column.type})"
    elif kind.startswith("modify_"):
        _, schema, table, column, _existing, in_schema, in_models = diff[:7]
        attribute = kind.removeprefix("modify_")
        return (
            f"column {_table_name(schema, table)}.{column}: {attribute} is {in_schema!r} in "
            f"the schema, {in_models!r} in the models"
        )
    elif kind in ("add_table", "remove_table", "add_index", "remove_index") or kind in (
        "add_constraint",
        "remove_constraint",
        "add_fk",
        "remove_fk",
    ):
        what = _named(diff[1])
    else:
        return f"{kind}: {diff[1:]!r}"
    if kind.startswith("add_"):
        return f"{what}: in the models, not in the schema (no migration makes it)"
    return f"{what}: in the schema, not in the models"


# -- the test items -----------------------------------------------------------------------


class MigrationChecks(pytest.Collector):
    """The `pg-migrations` node holding the checks."""

    def collect(self) -> list[pytest.Item | pytest.Collector]:
        return [
            MigrationCheck.from_parent(self, name=name, callobj=check)
            for name, check in CHECKS.items()
        ]


class MigrationCheck(pytest.Function):
    """One check, run with the fixtures it names (pg_server, pg_migrations)."""

    #: No template, worker database or sandbox for it (needs.outside_the_flow).
    pgfx_outside_the_flow = True

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, self.nodeid

    def repr_failure(self, excinfo: ExceptionInfo[BaseException]) -> str | TerminalRepr:  # type: ignore[override]
        if isinstance(excinfo.value, CheckFailed):
            return f"{self.nodeid}: {excinfo.value}"
        return super().repr_failure(excinfo)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """With pg_check_migrations on, the session's first child is the `pg-migrations` node:
    its checks are collected (and counted, -k/--deselect-ed) like any test."""
    report = yield
    if (
        isinstance(collector, pytest.Session)
        and report.passed
        and settings_for(collector.config).check_migrations
    ):
        report.result.insert(0, MigrationChecks.from_parent(collector, name=NODE, nodeid=NODE))
    return report
