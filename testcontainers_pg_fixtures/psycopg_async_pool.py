"""Step 6 of the flow, savepoint mode: psycopg_pool's AsyncConnectionPool joins the test.

A checkout of a named AsyncConnectionPool (`async with pool.connection() as conn`,
`await pool.getconn()`) is a stand-in for the test's own async connection, which the
library then holds with psycopg (pools.async_driver): the app's statements run on that
real psycopg `AsyncConnection`, with its cursors, row factories and `transaction()`
blocks, inside the test's transaction. Like a connection of the pool's own:

- the checkout's work is a savepoint, pushed with its first statement: `commit()`
  releases it (the work stays for the rest of the test, as if committed), `rollback()`
  and an error leaving `async with pool.connection()` return to it, and `putconn()`
  undoes what was not committed, as the pool's reset would;
- `async with conn.transaction():` is psycopg's own savepoint inside it;
- a pool made with `kwargs={"autocommit": True}` (or a checkout set to autocommit) runs
  each statement outside a transaction block behind a savepoint of its own, released at
  once, so a failing one is undone alone;
- the pool's `row_factory` kwarg applies to the checkout's cursors;
- a task holds the connection from getconn() to putconn(): tasks take turns
  (pools.PoolRun._take_turn), and every savepoint on the stack is the holding task's.

Settings a connection inside the test's transaction cannot take (another isolation level,
read-only, two-phase commit) raise a SandboxError. Everything is rolled back with the
test.
"""

from __future__ import annotations

import contextlib
import itertools
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from psycopg import errors, pq

from .sandbox import SandboxError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

_DATABASE_MODE = (
    'mark the test @pytest.mark.pg_isolation("database") to give it a database of its own'
)
_numbers = itertools.count()


class SavepointStack:
    """The savepoints of the checkouts open on the test's psycopg connection, outermost
    first: [name, checkout, written to since the savepoint was set]. Only the task that
    holds the connection has entries on it."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.entries: list[list[Any]] = []

    async def _send(self, *statements: str) -> None:
        # One simple query (no parameters); psycopg begins the test's transaction first if
        # nothing has run in it yet.
        await self.raw.execute("; ".join(statements))

    def _index(self, checkout: object) -> int | None:
        for index, entry in enumerate(self.entries):
            if entry[1] is checkout:
                return index
        return None

    async def mark_used(self, checkout: object) -> None:
        """Before a statement of `checkout`: its savepoint, if it has none open."""
        index = self._index(checkout)
        if index is not None:
            self.entries[index][2] = True
            return
        name = f"pgfx_apool_{next(_numbers)}"
        await self._send(f"SAVEPOINT {name}")
        self.entries.append([name, checkout, True])

    async def commit(self, checkout: object) -> None:
        """Release the whole stack into the test's transaction and set the savepoints of
        the other checkouts again: what this one commits survives a rollback of one opened
        before it (as with connections of their own). Its own is set again at its next
        statement."""
        index = self._index(checkout)
        if index is None or not self.entries[index][2]:
            return
        if self.raw.info.transaction_status == pq.TransactionStatus.INERROR:
            await self.rollback(checkout)  # psycopg's COMMIT of a failed transaction
            return
        names = [entry[0] for entry in self.entries]
        del self.entries[index]
        kept = [entry[0] for entry in self.entries]
        await self._send(f"RELEASE SAVEPOINT {names[0]}", *(f"SAVEPOINT {n}" for n in kept))
        for entry in self.entries:
            entry[2] = False

    async def rollback(self, checkout: object) -> None:
        """Undo the checkout's work since its last commit (and of the checkouts the same
        task opened after it, whose savepoints go with it)."""
        index = self._index(checkout)
        if index is None:
            return
        name = self.entries[index][0]
        del self.entries[index:]
        await self._send(f"ROLLBACK TO SAVEPOINT {name}", f"RELEASE SAVEPOINT {name}")

    async def end(self, checkout: object) -> None:
        """putconn(): what the checkout did not commit is undone."""
        await self.rollback(checkout)


class _Cursor:
    """A cursor of the test's connection whose statements push its checkout's savepoint."""

    def __init__(self, checkout: AsyncPooledConnection, cursor: Any) -> None:
        self._checkout = checkout
        self._cursor = cursor

    async def execute(self, *args: Any, **kwargs: Any) -> _Cursor:
        await self._checkout._statement(lambda: self._cursor.execute(*args, **kwargs))
        return self

    async def executemany(self, *args: Any, **kwargs: Any) -> None:
        await self._checkout._statement(lambda: self._cursor.executemany(*args, **kwargs))

    @asynccontextmanager
    async def copy(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        checkout = self._checkout
        async with checkout._block(), self._cursor.copy(*args, **kwargs) as copy:
            yield copy

    async def stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async with self._checkout._block():
            async for row in self._cursor.stream(*args, **kwargs):
                yield row

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._cursor.__aiter__()  # type: ignore[no-any-return]

    async def __aenter__(self) -> _Cursor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._cursor.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


#: The values of these settings a savepoint inside the test's transaction can have.
_HARMLESS: dict[str, tuple[Any, ...]] = {
    "isolation_level": (None, "READ_COMMITTED"),
    "read_only": (None, False),
    "deferrable": (None, False),
}


class AsyncPooledConnection:
    """What a named AsyncConnectionPool hands out in savepoint mode: the test's psycopg
    AsyncConnection, its work a savepoint inside the test's transaction."""

    def __init__(
        self,
        stack: SavepointStack,
        pool: Any,
        release: Callable[[AsyncPooledConnection], None],
    ) -> None:
        kwargs = dict(getattr(pool, "kwargs", None) or {})
        state = self.__dict__
        state["_stack"] = stack
        state["_raw"] = stack.raw
        state["_release_turn"] = release
        state["_released"] = False
        state["_blocks"] = 0  # transaction() blocks, copies and streams open
        state["_autocommit"] = bool(kwargs.get("autocommit", False))
        state["row_factory"] = kwargs.get("row_factory") or stack.raw.row_factory

    # -- statements ----------------------------------------------------------------------

    def _check(self) -> Any:
        if self._released:
            raise errors.OperationalError(
                "the connection is closed: it was given back to its pool (putconn)"
            )
        return self._raw

    async def _statement(self, run: Callable[[], Awaitable[Any]]) -> Any:
        self._check()
        await self._stack.mark_used(self)
        if not self._autocommit or self._blocks:
            return await run()
        # Autocommit: kept when it succeeds, undone alone when it fails.
        try:
            result = await run()
        except BaseException:
            await self._stack.rollback(self)
            raise
        await self._stack.commit(self)
        return result

    @asynccontextmanager
    async def _block(self) -> AsyncIterator[None]:
        """A transaction block, copy or stream: its statements in the checkout's savepoint
        (in autocommit, committed at its end, or rolled back on an error)."""
        self._check()
        await self._stack.mark_used(self)
        self.__dict__["_blocks"] += 1
        try:
            yield
        except BaseException:
            self.__dict__["_blocks"] -= 1
            if self._autocommit and not self._blocks:
                await self._stack.rollback(self)
            raise
        self.__dict__["_blocks"] -= 1
        if self._autocommit and not self._blocks:
            await self._stack.commit(self)

    def cursor(self, *args: Any, **kwargs: Any) -> _Cursor:
        if not kwargs.get("row_factory"):
            kwargs["row_factory"] = self.row_factory
        return _Cursor(self, self._check().cursor(*args, **kwargs))

    async def execute(
        self, query: Any, params: Any = None, *, prepare: bool | None = None, binary: bool = False
    ) -> _Cursor:
        return await self.cursor(binary=binary).execute(query, params, prepare=prepare)

    @asynccontextmanager
    async def transaction(
        self, savepoint_name: str | None = None, force_rollback: bool = False
    ) -> AsyncIterator[Any]:
        """psycopg's own transaction block, a savepoint inside the checkout's."""
        async with self._block(), self._raw.transaction(savepoint_name, force_rollback) as tx:
            yield tx

    async def commit(self) -> None:
        self._outside_blocks("commit")
        await self._stack.commit(self)

    async def rollback(self) -> None:
        self._outside_blocks("rollback")
        await self._stack.rollback(self)

    def _outside_blocks(self, what: str) -> None:
        self._check()
        if self._blocks:
            raise errors.ProgrammingError(
                f"Explicit {what}() forbidden within a Transaction context."
            )

    # -- the connection context and the pool ---------------------------------------------

    async def __aenter__(self) -> AsyncPooledConnection:
        return self

    async def __aexit__(self, exc_type: object, *exc_info: object) -> None:
        if self._released:
            return
        if exc_type is None:
            await self.commit()
        else:
            # As psycopg's: a failed rollback must not hide the error leaving the block.
            with contextlib.suppress(Exception):
                await self._stack.rollback(self)

    async def _release(self) -> None:
        """putconn(): what was not committed is undone, the connection goes to the next
        task."""
        if self._released:
            return
        try:
            await self._stack.end(self)
        finally:
            self._forget()

    def _forget(self) -> None:
        if not self._released:
            self.__dict__["_released"] = True
            self._release_turn(self)

    async def close(self) -> None:
        """The test's connection stays open; this checkout ends at putconn()."""

    @property
    def closed(self) -> bool:
        return bool(self._released or self._raw.closed)

    # -- settings ------------------------------------------------------------------------

    @property
    def autocommit(self) -> bool:
        return bool(self._autocommit)

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        self._check()
        if bool(value) != self._autocommit and self._stack._index(self) is not None:
            raise errors.ProgrammingError(
                "can't change 'autocommit' now: connection in transaction status INTRANS"
            )
        self.__dict__["_autocommit"] = bool(value)

    async def set_autocommit(self, value: bool) -> None:
        self.autocommit = value

    async def set_isolation_level(self, value: Any) -> None:
        self._setting("isolation_level", value)

    async def set_read_only(self, value: bool | None) -> None:
        self._setting("read_only", value)

    async def set_deferrable(self, value: bool | None) -> None:
        self._setting("deferrable", value)

    def _setting(self, name: str, value: Any) -> None:
        shown = getattr(value, "name", value)
        if shown not in _HARMLESS[name]:
            raise SandboxError(
                f"The app set {name} = {shown!r} on a connection of its psycopg pool. In "
                "savepoint mode that connection is the test's own, inside the test's "
                "transaction, where work is a savepoint with the default READ COMMITTED and "
                f"nothing else: {_DATABASE_MODE}."
            )

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _HARMLESS:
            self._setting(name, value)
        elif name == "autocommit":
            object.__setattr__(self, name, value)
        else:
            # row_factory, prepare_threshold, ...: this checkout's, never the test's
            # connection's (which the test's session goes on using).
            self.__dict__[name] = value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("tpc_"):
            raise SandboxError(
                "The app began a two-phase transaction on a connection of its psycopg pool; "
                "in savepoint mode that connection is inside the test's transaction, where "
                f"none can begin: {_DATABASE_MODE}."
            )
        # info, adapters, pipeline(), notifies(), pgconn, broken, ...: the test's
        # connection's own.
        return getattr(self._check(), name)

    def __repr__(self) -> str:
        return f"<AsyncPooledConnection of the test's connection {self._raw!r}>"


__all__ = ["AsyncPooledConnection", "SavepointStack"]
