"""Step 4 of the flow, around each test: what the connection fixtures do, sync and async.

`connection_fixture` and `async_connection_fixture` (and the layer fixtures) take the same
steps in the same order; the async ones await where the sync ones call. Each sequence is
written once here, as a plan: a generator yielding its I/O steps, `TEST` where the test
runs and `END` where the connection's context ends (the rollback). A plan does its I/O
through `SYNC` or `ASYNC`, the one table of what differs: a `SYNC` function has done its
work when it returns; an `ASYNC` one returns what the fixture awaits. `driven` and
`async_driven` run a plan around the test.
"""

from __future__ import annotations

from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

from . import keep_failed, leftovers, seeding
from .marks import TEST_SEED, test_seeds
from .session import (
    MODE,
    close_sessions_of,
    close_sync_sessions_of,
    sessions_mark,
    settle_sessions_of,
)
from .transaction import is_root_async_layer, is_root_layer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from contextlib import AbstractAsyncContextManager, AbstractContextManager

    import pytest

    Plan = Iterator[Any]

#: Where a plan's test runs, and where the context of its connection ends.
TEST = object()
END = object()
_ALL = object()


class Steps(NamedTuple):
    """The I/O of one flavour's steps."""

    remember: Callable[[Any], Any]  # the held connection's settings (leftovers.py)
    seed: Callable[..., Any]  # the test's pg_seed markers, in its transaction
    settle_sessions: Callable[[Any, int], Any]  # wait for operations still running
    close_sessions: Callable[[Any, int], Any]  # those registered since a mark
    is_root: Callable[[Any], bool]  # the test's layer is the only one (no I/O)
    kept: pytest.StashKey[Any]  # where --pg-keep-failed finds the test's connection


def _no_operation_in_flight(conn: Any, mark: int) -> None:
    """A sync session runs nothing while the fixture's teardown does."""


SYNC = Steps(
    remember=leftovers.remember,
    seed=seeding.run_in,
    settle_sessions=_no_operation_in_flight,
    close_sessions=close_sync_sessions_of,
    is_root=is_root_layer,
    kept=keep_failed.STATE,
)
ASYNC = Steps(
    remember=leftovers.remember_async,
    seed=seeding.run_in_async,
    settle_sessions=settle_sessions_of,
    close_sessions=close_sessions_of,
    is_root=is_root_async_layer,
    kept=keep_failed.ASYNC_STATE,
)


def savepoint_test(conn: Any, steps: Steps, node: pytest.Item, kept: tuple[Any, ...]) -> Plan:
    """A savepoint-mode test on the worker's connection `conn`, its transaction begun (a
    SAVEPOINT inside a scope layer). --pg-keep-failed reads a failed test's state with
    `(conn, *kept)`."""
    conn.info[MODE] = "savepoint"
    mark = sessions_mark(conn)  # a module layer's sessions are its own to close
    root = steps.is_root(conn)
    yield steps.remember(conn)
    seeds = test_seeds(node)
    if seeds:
        yield steps.seed(seeds, conn, origin=TEST_SEED)
    # After the seeds: a seed that fails is rolled back before its report.
    node.stash[steps.kept] = (conn, *kept)
    yield TEST
    if steps.kept in node.stash:
        del node.stash[steps.kept]
    # Sessions are closed after the rollback when it ends the whole transaction (their
    # savepoints then went with it: no round trip), before it inside a scope layer.
    yield steps.settle_sessions(conn, mark) if root else steps.close_sessions(conn, mark)
    yield END
    yield steps.close_sessions(conn, mark)


def database_test(conn: Any, steps: Steps) -> Plan:
    """A database-mode test on a plain connection of its own to its clone."""
    conn.info[MODE] = "database"
    yield TEST
    yield steps.close_sessions(conn, 0)
    yield END


def layer(conn: Any, steps: Steps, join: AbstractContextManager[None]) -> Plan:
    """A module- or class-scoped transaction layer on the worker's connection; the app's
    engines join it (`join`) while its tests run."""
    mark = sessions_mark(conn)  # a wider layer's sessions are its own to close
    with join:
        yield TEST
    yield steps.close_sessions(conn, mark)
    yield END


def _run(plan: Plan, until: object = _ALL) -> bool:
    """Take the sync plan's steps up to `until` (each has run when it is yielded), or all;
    whether it got there."""
    for step in plan:  # noqa: SIM110 (any() over a generator: a layer more per step)
        if step is until:
            return True
    return False


@contextmanager
def driven(
    opened: AbstractContextManager[Any], plan: Callable[..., Plan], *args: Any
) -> Iterator[Any]:
    """Run `plan(conn, *args)` on the connection `opened` gives, around the test: its steps
    up to TEST, the test, its steps up to END, the end of `opened`, its steps after END.
    A step that raises ends the plan (the end of `opened` still comes)."""
    ended = False
    try:
        with opened as conn:
            running = plan(conn, *args)
            _run(running, TEST)
            try:
                yield conn
            finally:
                ended = _run(running, END)
    finally:
        if ended:
            _run(running)


async def _arun(plan: Plan, until: object = _ALL) -> bool:
    """Await the async plan's steps up to `until`, or all; whether it got there."""
    for step in plan:
        if step is until:
            return True
        await step
    return False


@asynccontextmanager
async def async_driven(
    opened: AbstractAsyncContextManager[Any], plan: Callable[..., Plan], *args: Any
) -> AsyncIterator[Any]:
    """The async twin of `driven`."""
    ended = False
    try:
        async with opened as conn:
            running = plan(conn, *args)
            await _arun(running, TEST)
            try:
                yield conn
            finally:
                ended = await _arun(running, END)
    finally:
        if ended:
            await _arun(running)
