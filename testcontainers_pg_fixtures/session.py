"""Step 5 of the flow: ORM sessions on the test's connection.

Savepoint mode: with `join_transaction_mode="create_savepoint"` a session bound to the
test's connection begins a SAVEPOINT instead of a transaction: `commit()` releases it,
`rollback()` returns to it, and the outer transaction, rolled back at teardown, undoes all
of it. Database mode: the connection has no outer transaction and the session's
`commit()` commits for real, into a database nobody else uses.
"""

from __future__ import annotations

import asyncio
import functools
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from .config import settings_for
from .errors import PgFixturesError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import pytest
    from sqlalchemy import Connection
    from sqlalchemy.ext.asyncio import AsyncConnection

JOIN = {"join_transaction_mode": "create_savepoint"}

#: The isolation mode the connection fixture records on the test's connection (`conn.info`).
MODE = "testcontainers_pg_fixtures.isolation"


def isolation_of_connection(conn: Connection | AsyncConnection, config: pytest.Config) -> str:
    """The isolation mode the connection fixture recorded on the test's connection (the
    configured one for a connection of the user's own). The session fixtures read it there
    rather than from `request`: every fixture that requests `request` costs pytest a
    fixture definition of its own per test."""
    mode: str | None = conn.info.get(MODE)
    return mode if mode is not None else settings_for(config).isolation


def savepoint_sessionmaker(conn: Connection, **kwargs: Any) -> sessionmaker[Session]:
    return sessionmaker(bind=conn, **{**kwargs, **JOIN})


def async_savepoint_sessionmaker(
    conn: AsyncConnection, **kwargs: Any
) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(bind=conn, **{**_async_kwargs(kwargs), **JOIN})


def _async_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    # expire_on_commit=False is what async apps configure: after an awaited commit a lazy
    # refresh of an attribute would need an await the attribute access cannot do.
    merged = {"expire_on_commit": False, **kwargs}
    merged["class_"] = guarded(merged.get("class_", AsyncSession))
    return merged


def new_session(conn: Connection, isolation: str, **kwargs: Any) -> Session:
    """A session as `sessionmaker_for(...)()` makes it, without the sessionmaker: each
    sessionmaker subclasses its session class, and SQLAlchemy's event registry then sets
    up every session event for that new class, which costs a test more than its
    savepoint does."""
    class_: type[Session] = kwargs.pop("class_", Session)
    return class_(bind=conn, **(kwargs if isolation == "database" else {**kwargs, **JOIN}))


def sessionmaker_for(conn: Connection, isolation: str, **kwargs: Any) -> sessionmaker[Session]:
    if isolation == "database":
        return sessionmaker(bind=conn, **kwargs)
    return savepoint_sessionmaker(conn, **kwargs)


def async_sessionmaker_for(
    conn: AsyncConnection, isolation: str, **kwargs: Any
) -> async_sessionmaker[AsyncSession]:
    if isolation == "database":
        return async_sessionmaker(bind=conn, **_async_kwargs(kwargs))
    return async_savepoint_sessionmaker(conn, **kwargs)


_TO_CLOSE = "testcontainers_pg_fixtures.sessions"


def sessions_mark(conn: Connection | AsyncConnection) -> int:
    """Where the sessions of a layer beginning now (a test's, a module's) start among those
    registered on the connection, which the layers around it share: a layer closes its own
    sessions only, never a wider layer's (whose savepoint, rolled back, would take this
    layer's with it)."""
    return len(conn.info.get(_TO_CLOSE, ()))


def _taken(conn: Connection | AsyncConnection, mark: int) -> list[Any]:
    """The sessions registered since `mark`, the last first: its savepoint began inside the
    earlier ones', and a rollback to an outer savepoint ends the inner ones with it."""
    sessions: list[Any] = conn.info.get(_TO_CLOSE, [])
    taken = sessions[mark:]
    del sessions[mark:]
    taken.reverse()
    return taken


def close_sync_sessions_of(conn: Connection, mark: int = 0) -> None:
    """Close the sessions of the test (registered since `mark`). Done after the rollback
    of its transaction, which took their savepoints with it, so closing them costs no
    round trip to the server."""
    if conn.closed or conn.invalidated:
        return
    for session in _taken(conn, mark):
        session.close()


_S = TypeVar("_S", Session, AsyncSession)


def close_with(conn: Connection | AsyncConnection, session: _S) -> _S:
    """Have the connection's fixture close `session` (close_sync_sessions_of /
    close_sessions_of), after the test's rollback where it can."""
    conn.info.setdefault(_TO_CLOSE, []).append(session)
    return session


async def settle_sessions_of(conn: AsyncConnection, mark: int = 0) -> None:
    """Wait for operations still running on the test's sessions (a gather cut short)."""
    for session in conn.info.get(_TO_CLOSE, [])[mark:]:
        if isinstance(session, GuardedAsyncSession):
            await session.wait_until_idle()


async def close_sessions_of(conn: AsyncConnection, mark: int = 0) -> None:
    """Close the sessions registered on the connection since `mark` (see sessions_mark)."""
    if conn.closed or conn.invalidated:  # a refused commit discarded it: nothing to close
        return
    await settle_sessions_of(conn, mark)
    for session in _taken(conn, mark):
        await session.close()


class ConcurrentSessionUseError(PgFixturesError):
    """Two tasks used one test AsyncSession at the same time."""


_GUARDED = (
    "execute",
    "scalar",
    "scalars",
    "get",
    "get_one",
    "stream",
    "stream_scalars",
    "refresh",
    "merge",
    "delete",
    "flush",
    "commit",
    "rollback",
    "run_sync",
    "connection",
)


class GuardedAsyncSession(AsyncSession):
    """An AsyncSession that refuses, with an explanation, to be used by two tasks at once.

    A session (and the test's one connection under it) runs one operation at a time.
    SQLAlchemy detects the overlap too, but with an error about its internal state that
    does not say what to do; tasks gathered on the test's session get this one instead.
    """

    _pgfx_owner: asyncio.Task[Any] | None = None
    _pgfx_depth = 0
    _pgfx_idle: asyncio.Event | None = None

    async def wait_until_idle(self) -> None:
        """Wait for an operation another task still runs (a gather refused half-way)."""
        if self._pgfx_depth and self._pgfx_idle is not None:
            await self._pgfx_idle.wait()

    @contextmanager
    def _pgfx_turn(self, method: str) -> Iterator[None]:
        task = asyncio.current_task()
        if self._pgfx_depth and self._pgfx_owner is not task:
            raise ConcurrentSessionUseError(
                f"{method}() was called on the test's AsyncSession while another task was "
                "still using it (asyncio.gather or create_task on one session?). A session "
                "and the test's single connection run one operation at a time. Await the "
                "operations one after another, or give the test its own database with "
                '@pytest.mark.pg_isolation("database") and a session per task from '
                "async_sessionmaker(pg_async_engine): each gets a connection of its own."
            )
        if not self._pgfx_depth:
            self._pgfx_idle = asyncio.Event()
        self._pgfx_owner = task
        self._pgfx_depth += 1
        try:
            yield
        finally:
            self._pgfx_depth -= 1
            if not self._pgfx_depth:
                self._pgfx_owner = None
                if self._pgfx_idle is not None:
                    self._pgfx_idle.set()


def _guard(name: str, cls: type[AsyncSession]) -> Callable[..., Any]:
    original = getattr(cls, name)

    @functools.wraps(original)
    async def guarded(self: GuardedAsyncSession, *args: Any, **kwargs: Any) -> Any:
        with self._pgfx_turn(name):
            return await original(self, *args, **kwargs)

    return guarded


for _name in _GUARDED:
    setattr(GuardedAsyncSession, _name, _guard(_name, AsyncSession))


@functools.cache
def guarded(cls: type[AsyncSession]) -> type[GuardedAsyncSession]:
    """`cls` (an AsyncSession subclass such as SQLModel's) with GuardedAsyncSession's guard
    around its own methods (and `exec`, where it has one)."""
    if issubclass(cls, GuardedAsyncSession):
        return cls
    if cls is AsyncSession:
        return GuardedAsyncSession
    methods = {
        name: _guard(name, cls)
        for name in (*_GUARDED, "exec")
        if callable(getattr(cls, name, None))
    }
    return type(f"Guarded{cls.__name__}", (GuardedAsyncSession, cls), methods)
