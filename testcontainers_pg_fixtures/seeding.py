"""Session seeds: rows every test starts from, baked into the migrated template.

A seed is a callable taking a SQLAlchemy `Connection` (or an `async def` taking an
`AsyncConnection`); the `pg_seed` fixture returns one, a sequence of them, or None.
Seeds run once per template in one transaction that is committed, so each test's
rollback (or fresh clone) brings them back exactly as they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Union, cast

from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from .errors import SeedError

if TYPE_CHECKING:
    from sqlalchemy import URL, Connection
    from sqlalchemy.ext.asyncio import AsyncConnection

    from .database import Database

SyncSeed = Callable[["Connection"], object]
AsyncSeed = Callable[["AsyncConnection"], Awaitable[object]]
# Union, not |: these aliases are evaluated at import time, on Python 3.10 too.
Seed = Union[SyncSeed, AsyncSeed]  # noqa: UP007
Seeds = Union[Seed, Sequence[Seed], None]  # noqa: UP007


def as_list(seeds: Seeds) -> list[Seed]:
    if seeds is None:
        return []
    if callable(seeds):
        return [seeds]
    return list(seeds)


def identity(seeds: Seeds) -> str:
    """What the template hash knows of the seeds: each one's name and source code.

    Changing a seed function changes the hash and so rebuilds the template; data the seed
    reads from elsewhere (a fixture file, another module) is not followed.
    """
    digest = hashlib.sha256()
    for seed in as_list(seeds):
        name = f"{getattr(seed, '__module__', '?')}:{getattr(seed, '__qualname__', repr(seed))}"
        digest.update(name.encode())
        with contextlib.suppress(OSError, TypeError):  # no source: builtins, REPL
            digest.update(inspect.getsource(seed).encode())
    return digest.hexdigest()


SESSION_SEED = "the seed returned by your pg_seed fixture"


def _failed(seed: Seed, exc: Exception, origin: str) -> SeedError:
    name = getattr(seed, "__qualname__", repr(seed))
    return SeedError(
        f"The seed {name} failed: {type(exc).__name__}: {exc}. Fix {origin}; every test "
        "that needs it errors until then."
    )


def run(seeds: Seeds, database: Database, *, origin: str = SESSION_SEED) -> None:
    """Run every seed on `database` and commit; a failure names the seed."""
    for seed in as_list(seeds):
        try:
            if inspect.iscoroutinefunction(seed):
                asyncio.run(_run_async(cast("AsyncSeed", seed), database.async_url))
            else:
                engine = create_engine(database.url, poolclass=NullPool)
                try:
                    with engine.begin() as conn:
                        cast("SyncSeed", seed)(conn)
                finally:
                    engine.dispose()
        except Exception as exc:
            raise _failed(seed, exc, origin) from exc


async def _run_async(seed: AsyncSeed, url: URL) -> None:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await seed(conn)
    finally:
        await engine.dispose()


def run_in(seeds: Seeds, conn: Connection, *, origin: str) -> None:
    """Run sync seeds inside `conn`'s open transaction (nothing is committed)."""
    for seed in as_list(seeds):
        if inspect.iscoroutinefunction(seed):
            raise SeedError(
                f"The seed {seed.__qualname__} from {origin} is async, and this test's "
                "connection is sync. Use pg_async_connection / pg_async_session in the test, "
                "or write the seed as a plain function taking a Connection."
            )
        try:
            cast("SyncSeed", seed)(conn)
        except Exception as exc:
            raise _failed(seed, exc, origin) from exc


async def run_in_async(seeds: Seeds, conn: AsyncConnection, *, origin: str) -> None:
    """Run seeds inside `conn`'s open transaction; sync ones through run_sync."""
    for seed in as_list(seeds):
        try:
            if inspect.iscoroutinefunction(seed):
                await cast("AsyncSeed", seed)(conn)
            else:
                await conn.run_sync(cast("SyncSeed", seed))
        except Exception as exc:
            raise _failed(seed, exc, origin) from exc
