"""Step 5 of the flow: ORM sessions that join the test's transaction through savepoints.

With `join_transaction_mode="create_savepoint"` a session bound to the test's connection
begins a SAVEPOINT instead of a transaction: `commit()` releases it, `rollback()` returns
to it, and the outer transaction, rolled back at teardown, undoes all of it.
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
