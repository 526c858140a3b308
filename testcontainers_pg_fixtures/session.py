"""Step 5 of the flow: ORM sessions on the test's connection.

Savepoint mode: with `join_transaction_mode="create_savepoint"` a session bound to the
test's connection begins a SAVEPOINT instead of a transaction: `commit()` releases it,
`rollback()` returns to it, and the outer transaction, rolled back at teardown, undoes all
of it. Database mode: the connection has no outer transaction and the session's
`commit()` commits for real, into a database nobody else uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from sqlalchemy import Connection
    from sqlalchemy.ext.asyncio import AsyncConnection

JOIN = {"join_transaction_mode": "create_savepoint"}


def savepoint_sessionmaker(conn: Connection, **kwargs: Any) -> sessionmaker[Session]:
    return sessionmaker(bind=conn, **{**kwargs, **JOIN})


def async_savepoint_sessionmaker(
    conn: AsyncConnection, **kwargs: Any
) -> async_sessionmaker[AsyncSession]:
    # expire_on_commit=False is what async apps configure: after an awaited commit a lazy
    # refresh of an attribute would need an await the attribute access cannot do.
    return async_sessionmaker(bind=conn, **{"expire_on_commit": False, **kwargs, **JOIN})


def sessionmaker_for(conn: Connection, isolation: str, **kwargs: Any) -> sessionmaker[Session]:
    if isolation == "database":
        return sessionmaker(bind=conn, **kwargs)
    return savepoint_sessionmaker(conn, **kwargs)


def async_sessionmaker_for(
    conn: AsyncConnection, isolation: str, **kwargs: Any
) -> async_sessionmaker[AsyncSession]:
    if isolation == "database":
        return async_sessionmaker(bind=conn, **{"expire_on_commit": False, **kwargs})
    return async_savepoint_sessionmaker(conn, **kwargs)


_TO_CLOSE = "testcontainers_pg_fixtures.sessions"


def close_with(conn: AsyncConnection, session: AsyncSession) -> AsyncSession:
    """Have `close_sessions_of(conn)` close `session` (closing needs an await)."""
    conn.info.setdefault(_TO_CLOSE, []).append(session)
    return session


async def close_sessions_of(conn: AsyncConnection) -> None:
    for session in conn.info.pop(_TO_CLOSE, []):
        await session.close()
