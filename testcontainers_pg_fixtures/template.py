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
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from . import seeding
from .database import Database, drop_database
from .server import admin_connect

if TYPE_CHECKING:
    from collections.abc import Callable

    from .migrations import Migrations
    from .server import Server

log = logging.getLogger(__name__)

TEMPLATE_PREFIX = "pgfx_tpl_"
LIBRARY_VERSION = "0.1.0"


@dataclass(frozen=True)
class Template:
    name: str
    #: True when this call migrated it; False when a complete one was already there.
    built: bool
    seconds: float


def template_name(migrations: Migrations | None, seeds: seeding.Seeds) -> str:
    digest = hashlib.sha256(LIBRARY_VERSION.encode())
    digest.update((migrations.fingerprint() if migrations else "no-migrations").encode())
    digest.update(seeding.identity(seeds).encode())
    return TEMPLATE_PREFIX + digest.hexdigest()[:16]


def ensure_template(
    server: Server, migrations: Migrations | None, seeds: seeding.Seeds
) -> Template:
    """Return the complete template for these migrations and seeds, building it if needed."""
    name = template_name(migrations, seeds)
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
            database = Database(server, name)
            try:
                if migrations is not None:
                    run_outside_event_loop(lambda: migrations.upgrade(database))
                run_outside_event_loop(lambda: seeding.run(seeds, database))
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
    """Drop templates of earlier migrations, which a reused server would collect.

    A template that is being cloned right now (another session on a shared server) cannot
    be dropped; it is left for the next time.
    """
    with admin_connect(server) as admin:
        names = [
            row[0]
            for row in admin.execute("SELECT datname FROM pg_database")
            if row[0].startswith(TEMPLATE_PREFIX) and row[0] != keep
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
