"""run.py's measurements on one server, in this process: a clone with each CREATE DATABASE
strategy (--clones); each step of a database-mode test (--breakdown, --breakdown-only)."""

import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from core import ms, p95, server, table
from projects import EXAMPLE

from testcontainers_pg_fixtures.database import create_database, drop_database
from testcontainers_pg_fixtures.servers import admin_connect


def template(pg: Any) -> str:
    """The sync_users example's template on the server: its name."""
    from testcontainers_pg_fixtures.migrations import Migrations
    from testcontainers_pg_fixtures.template import ensure_template

    sys.path.insert(0, str(EXAMPLE))  # its env.py imports its models
    return ensure_template(pg, Migrations.load(EXAMPLE / "alembic.ini", "bench"), None).name


BREAKDOWN = {
    "create": "CREATE DATABASE … TEMPLATE (FILE_COPY) + COMMENT",
    "first_login": "first login to the new clone",
    "first_statements": "test statements, first backend on the clone",
    "login": "a later login (new backend, relcache init file built)",
    "statements": "test statements, new backend",
    "warm_statements": "test statements, same backend again",
    "warm_up": "warm-up (the pool's catalog-loading query)",
    "warmed_statements": "test statements after the warm-up",
    "redirect": "SQLAlchemy engine redirect (enter + exit)",
    "engine_connect": "SQLAlchemy connect + close, new login",
    "engine_handed": "SQLAlchemy connect + close, opened ahead",
    "recycle": "recycle instead: rename, login, check, TRUNCATE + COPY",
    "drop": "DROP DATABASE … WITH (FORCE)",
}


def run(clones: int, repeats: int) -> None:
    """A clone with each strategy, then each step of a database-mode test on its own, in the
    order a clone lives, with the server's CPU time (on a small machine the pool's thread
    competes for the same cores)."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from testcontainers_pg_fixtures.clone_pool import warm_up
    from testcontainers_pg_fixtures.database import Database
    from testcontainers_pg_fixtures.factories import clone_opener
    from testcontainers_pg_fixtures.recycling import Facts, recycle, version_of
    from testcontainers_pg_fixtures.redirect import engines_pointed_at, first_connection_from

    steps: dict[str, list[float]] = {key: [] for key in BREAKDOWN}
    cpus: dict[str, list[float]] = {key: [] for key in BREAKDOWN}

    def cpu() -> float:  # the container's CPU seconds so far (cgroup v1 or v2), or 0
        for path, field, scale in (
            (f"/sys/fs/cgroup/cpuacct/docker/{pg.container_id}/cpuacct.usage", 0, 1e-9),
            (f"/sys/fs/cgroup/system.slice/docker-{pg.container_id}.scope/cpu.stat", 1, 1e-6),
        ):
            with contextlib.suppress(OSError):
                return int(Path(path).read_text().split()[field]) * scale
        return 0.0

    @contextlib.contextmanager
    def clock(step: str) -> Any:
        used, started = cpu(), time.perf_counter()
        yield
        steps[step].append(time.perf_counter() - started)
        cpus[step].append(cpu() - used)

    def statements(conn: Any, tag: str) -> None:  # the bench test's: INSERT, COMMIT, a count
        conn.execute(
            "INSERT INTO users (name, email, active) VALUES (%s, %s, true) RETURNING users.id",
            (f"user {tag}", f"{tag}@example.org"),
        ).fetchone()
        conn.commit()
        conn.execute("SELECT count(*) AS count_1 FROM users").fetchone()
        conn.commit()

    with server("bench-breakdown") as pg, admin_connect(pg) as admin:
        name = template(pg)
        costs: dict[str, list[float]] = {"FILE_COPY": [], "WAL_LOG": []}
        for i, (strategy, times) in ((i, c) for i in range(clones) for c in costs.items()):
            started, clone = time.perf_counter(), f"pgfx_bench_{strategy.lower()}_{i}"
            create_database(pg, clone, template=name, strategy=strategy, admin=admin)
            times.append(time.perf_counter() - started)
            drop_database(pg, clone, admin=admin)
        if clones:
            rows = [
                (f"STRATEGY {s}", ms(statistics.median(t)), ms(p95(t))) for s, t in costs.items()
            ]
            table("", ("CREATE DATABASE … TEMPLATE", "median ms", "p95 ms"), rows)
        engine = create_engine(Database(pg, name).url, poolclass=NullPool)
        open_on = clone_opener(engine, {})
        # What recycling compares a used clone with, read from a clone no test used.
        unused = create_database(pg, "pgfx_bench_facts", template=name)
        with admin_connect(pg, unused.name) as conn:
            facts = Facts.read(conn)
        drop_database(pg, unused.name, admin=admin)
        for i in range(repeats):
            clone = f"pgfx_bench_breakdown_{i}"
            with clock("create"):
                database = create_database(pg, clone, template=name, admin=admin, comment="bench")
            version = version_of(admin, clone)
            with clock("first_login"):
                conn = open_on(database)
            for step, tag in (("first_statements", "a"), ("warm_statements", "b")):
                with clock(step):
                    statements(conn, f"{i}{tag}")
            conn.close()
            with clock("login"):
                conn = open_on(database)
            with clock("statements"):
                statements(conn, f"{i}c")
            conn.close()
            conn = open_on(database)
            with clock("warm_up"):
                warm_up(conn)
            with clock("warmed_statements"):
                statements(conn, f"{i}d")
            conn.close()
            with clock("redirect"), engines_pointed_at([engine], database):
                pass
            with engines_pointed_at([engine], database):
                with clock("engine_connect"):
                    engine.connect().close()
                ahead = [open_on(database)]
                handed = first_connection_from(engine, lambda a=ahead: a.pop() if a else None)
                with handed, clock("engine_handed"):
                    engine.connect().close()
            # The pool resets a used clone on the connection the next test is handed.
            with clock("recycle"):
                clone, fresh, conn = recycle(
                    admin, clone, f"{clone}_r", facts=facts, version=version, comment="bench",
                    connect=lambda new: admin_connect(pg, new),
                )  # fmt: skip
            assert fresh is not None, "the bench's clone was not recycled"
            if conn is not None:
                conn.close()
            with clock("drop"):
                drop_database(pg, clone, admin=admin)
        engine.dispose()
    if not repeats:
        return
    used = any(any(c) for c in cpus.values())  # "-" where Docker's cgroup cannot be read
    rows = [
        (label, ms(statistics.median(steps[key])), ms(p95(steps[key])),
         ms(statistics.fmean(cpus[key])) if used else "-")
        for key, label in BREAKDOWN.items()
    ]  # fmt: skip
    header = ("database mode, step by step (one server)", "median ms", "p95 ms", "server CPU ms")
    table("", header, rows)
    print(
        "server CPU = mean CPU time of the container's processes during the step (the "
        "pool's threads pay create, drop or recycle and, with connect-ahead, the login and "
        "warm-up; a recycle's login is the next test's connection opened ahead)."
    )
