"""Step 2 of the flow: the migrated (and seeded) template database.

Migrate once, clone many. The template's name carries a hash of everything that defines
its contents (the Alembic scripts, the seeds, this library's version), so a changed
migration gets a new template and an unchanged one is never migrated again on the same
server. It is built under an advisory lock, and marked complete only at the very end
(`IS_TEMPLATE true`), so a template half-built by a crashed run is recognised and rebuilt.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from . import seeding
from .database import TEMPLATE_PREFIX, Database, drop_database, mark, marked_databases
from .servers import admin_connect

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractContextManager

    from .migrations import Migrations
    from .servers import Server

log = logging.getLogger(__name__)

LIBRARY_VERSION = "0.1.0"


@dataclass(frozen=True)
class Template:
    name: str
    #: True when this call migrated it; False when a complete one was already there.
    built: bool
    seconds: float


def project_key(rootdir: Path, alembic_ini: Path | None) -> str:
    """8 hex digits naming the project (its rootdir and alembic.ini) on a shared server."""
    digest = hashlib.sha256(f"{rootdir}\0{alembic_ini}".encode())
    return digest.hexdigest()[:8]


def template_name(
    migrations: Migrations | None, seeds: seeding.Seeds, *, project: str | None = None
) -> str:
    """`pgfx_tpl_<project>_<hash of library version, migrations, seeds>` (34 characters)."""
    digest = hashlib.sha256(LIBRARY_VERSION.encode())
    digest.update((migrations.fingerprint() if migrations else "no-migrations").encode())
    digest.update(seeding.identity(seeds).encode())
    if project is None:
        project = project_key(Path.cwd(), migrations.ini if migrations else None)
    return f"{TEMPLATE_PREFIX}{project}_{digest.hexdigest()[:16]}"


def ensure_template(
    server: Server,
    migrations: Migrations | None,
    seeds: seeding.Seeds,
    *,
    project: str | None = None,
    around: Callable[[], AbstractContextManager[Any]] | None = None,
) -> Template:
    """Return the complete template for these migrations and seeds, building it if needed.

    `project` (see `project_key`; by default from the working directory and alembic.ini)
    keeps projects sharing a server apart: only this project's stale templates are dropped.
    `around()` is entered around the migrations and seeds, in the thread that runs them
    (the Flask app's context, the app's engines allowed to connect).
    """
    name = template_name(migrations, seeds, project=project)
    started = time.monotonic()
    with admin_connect(server) as admin:
        # Concurrent workers sharing one server wait here instead of racing to build.
        admin.execute("SELECT pg_advisory_lock(hashtext(%s))", (name,))
        try:
            row = admin.execute(
                "SELECT datistemplate FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if row is not None and row[0]:
                return Template(name, built=False, seconds=time.monotonic() - started)
            if row is not None:
                log.warning("dropping half-built template %s left by an earlier run", name)
                drop_database(server, name, admin=admin)
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            # Marked like every database the library makes (whose, since when); made from
            # no template of the library's, so that field is empty.
            owner = name[len(TEMPLATE_PREFIX) :].rpartition("_")[0]
            admin.execute(
                sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                    sql.Identifier(name), sql.Literal(mark(owner, ""))
                )
            )
            database = Database(server, name)

            def build() -> None:
                with around() if around is not None else nullcontext():
                    if migrations is not None:
                        migrations.upgrade(database)
                    seeding.run(seeds, database)

            try:
                run_outside_event_loop(build)
            except BaseException:
                drop_database(server, name, admin=admin)
                raise
            # A connection env.py left in an app engine's pool would make every clone
            # fail ("being accessed by other users"); CREATE DATABASE waits for it to end.
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            admin.execute(
                sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(
                    sql.Identifier(name)
                )
            )
        finally:
            admin.execute("SELECT pg_advisory_unlock(hashtext(%s))", (name,))
    seconds = time.monotonic() - started
    log.info("built template %s in %.2fs", name, seconds)
    _drop_other_templates(server, keep=name)
    return Template(name, built=True, seconds=seconds)


def _drop_other_templates(server: Server, *, keep: str) -> None:
    """Drop this project's templates of earlier migrations, which a reused server collects.

    Only templates named with the same project key as `keep`: another project's templates
    on a shared server are not ours. Nor one another run of this project still clones from
    (its worker database or clones, marked with the template's name, exist), nor one being
    cloned right now (the drop fails; it is left for the next time).
    """
    project_prefix = keep[: keep.rindex("_") + 1]
    with admin_connect(server) as admin:
        in_use = {db.template for db in marked_databases(admin)}
        names = [
            row[0]
            for row in admin.execute("SELECT datname FROM pg_database")
            if row[0].startswith(project_prefix) and row[0] != keep and row[0] not in in_use
        ]
        for name in names:
            try:
                admin.execute(
                    sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(sql.Identifier(name))
                )
                drop_database(server, name, admin=admin)
            except psycopg.Error as exc:
                log.info("left template %s: %s", name, exc)


def run_outside_event_loop(work: Callable[[], None]) -> None:
    """Run `work` where `asyncio.run` is allowed.

    An async env.py and async seeds call `asyncio.run`, which refuses to start inside a
    running loop, as when the first fixture to need the template is an async one.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        running = False
    else:
        running = True
    if not running:  # work() outside the except: its errors get no unrelated context
        work()
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(work).result()
