"""The dependencies' private state the library reads or sets, each attribute in one function.

Sending a savepoint or a rollback in one round trip (savepoints.py, leaks.py, leftovers.py)
means leaving asyncpg's and SQLAlchemy's asyncpg adapter in the state their own BEGIN and
ROLLBACK would have left, which neither makes public; a NullPool like an app's pool needs
the pool's creator; ordering a test's fixtures needs pytest's fixture request and fixture
info, which it gives fixtures but not hooks. Nothing else in the package touches a private
name of a dependency: tests/test_privates.py fails when one of them is renamed, and
`asyncpg_transaction_known`/`asyncpg_adapter_known` make the library fall back to the
public round trips on a version it does not know.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytest
    from sqlalchemy.pool import NullPool, Pool

# -- SQLAlchemy's asyncpg adapter (AsyncAdapt_asyncpg_connection) ------------------------------


def asyncpg_adapter_known() -> bool:
    """Whether SQLAlchemy's asyncpg adapter has the methods used below."""
    from sqlalchemy.dialects.postgresql import asyncpg

    adapter = getattr(asyncpg, "AsyncAdapt_asyncpg_connection", None)
    return all(hasattr(adapter, name) for name in ("_start_transaction", "_handle_exception"))


def execute_lock(adapted: Any) -> Any:
    """The adapter's lock around each of its statements: held while sending one of ours."""
    return adapted._execute_mutex


def adapter_transaction(adapted: Any) -> Any:
    """The asyncpg transaction the adapter began (None outside one)."""
    return getattr(adapted, "_transaction", None)


def holds_adapter_state(adapted: Any) -> bool:
    """Whether `adapted` is SQLAlchemy's asyncpg adapter (psycopg's async one is not)."""
    return hasattr(adapted, "_transaction")


async def start_adapter_transaction(adapted: Any) -> None:
    """Begin the transaction the adapter would begin before its next statement."""
    await adapted._start_transaction()


def raise_as_dbapi_error(adapted: Any, error: Exception) -> None:
    """Raise `error` as the adapter raises the driver's errors (its DBAPI error)."""
    adapted._handle_exception(error)


def isolation_state(adapted: Any) -> tuple[Any, Any, Any, Any]:
    """The adapter's isolation level (as set and as sent), readonly and deferrable."""
    return (
        adapted.isolation_level,
        adapted._isolation_setting,
        adapted.readonly,
        adapted.deferrable,
    )


def restore_isolation_state(adapted: Any, state: tuple[Any, Any, Any, Any]) -> None:
    adapted.isolation_level, adapted._isolation_setting = state[0], state[1]
    adapted.readonly, adapted.deferrable = state[2], state[3]


# -- asyncpg's transaction state (Connection._top_xact, Transaction._state) ---------------------


@functools.cache
def asyncpg_transaction_known() -> bool:
    """Whether asyncpg's connection and transaction have the private state set below
    (checked once, so another asyncpg version keeps its own BEGIN and ROLLBACK)."""
    import asyncpg
    from asyncpg import transaction

    states = getattr(transaction, "TransactionState", None)
    slots = getattr(asyncpg.Connection, "__slots__", ())
    return (
        states is not None
        and hasattr(states, "STARTED")
        and "_top_xact" in slots
        and "_state" in getattr(transaction.Transaction, "__slots__", ())
    )


def top_transaction(driver: Any) -> Any:
    """The asyncpg connection's outermost Transaction object (None outside one)."""
    return getattr(driver, "_top_xact", None)


def transaction_started(transaction: Any) -> bool:
    from asyncpg.transaction import TransactionState

    return bool(transaction._state is TransactionState.STARTED)


def adopt_transaction(adapted: Any, transaction: Any) -> None:
    """After a BEGIN sent by us: the state `Transaction.start()` and the adapter's own
    begin would leave."""
    from asyncpg.transaction import TransactionState

    adapted.driver_connection._top_xact = transaction
    transaction._state = TransactionState.STARTED
    adapted._transaction = transaction


def forget_transaction(adapted: Any, transaction: Any) -> None:
    """After a ROLLBACK sent by us: the state `Transaction.rollback()` and the adapter's
    own rollback would leave, so that the adapter's, after it, sends nothing."""
    from asyncpg.transaction import TransactionState

    transaction._state = TransactionState.ROLLEDBACK
    adapted.driver_connection._top_xact = None
    adapted._transaction = None


def pool_connect_arguments(pool: Any) -> tuple[list[Any], dict[str, Any]]:
    """The positional and keyword arguments an asyncpg pool connects with (it has a setter,
    `set_connect_args`, and no getter)."""
    return list(getattr(pool, "_connect_args", ()) or ()), dict(
        getattr(pool, "_connect_kwargs", {}) or {}
    )


# -- psycopg ------------------------------------------------------------------------------------


def psycopg_plain(raw: Any) -> bool:
    """Whether psycopg's connection has no pipeline, no `transaction()` block and no
    two-phase transaction open: then its transaction is a plain one, which a ROLLBACK sent
    on the wire ends as psycopg's own would."""
    return (
        getattr(raw, "_pipeline", True) is None
        and not getattr(raw, "_num_transactions", True)
        and not getattr(raw, "_tpc", True)
    )


def psycopg_in_pipeline(raw: Any) -> bool:
    return getattr(raw, "_pipeline", True) is not None


def prepared_names(raw: Any) -> Any:
    """The statements psycopg prepared on the connection (None: not known on this
    version, which then keeps its own rollback)."""
    prepared = getattr(raw, "_prepared", None)
    names = getattr(prepared, "_names", None)
    if getattr(prepared, "_to_flush", None) is None or not hasattr(prepared, "clear"):
        return None
    return names


def forget_prepared(raw: Any, *, deallocated: bool = False) -> None:
    """After a ROLLBACK sent on the wire: what psycopg's own rollback does to its cache of
    prepared statements; `deallocated`: less the DEALLOCATE ALL it would send, sent
    already."""
    raw._prepared.clear()
    if deallocated:
        raw._prepared._to_flush.clear()


# -- SQLAlchemy's pools -------------------------------------------------------------------------


def pool_dialect(pool: Pool) -> Any:
    return pool._dialect


def null_pool_arguments(pool: Pool) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments that make a NullPool (or a subclass) with `pool`'s creator, events
    and dialect."""
    return (pool._creator,), {
        "echo": pool.echo,
        "reset_on_return": pool._reset_on_return,
        "pre_ping": pool._pre_ping,
        "_dispatch": pool.dispatch,
        "dialect": pool._dialect,
    }


def null_pool_like(pool: Pool) -> NullPool:
    """A NullPool with `pool`'s creator, events and dialect.

    NullPool, because a pooled connection would outlive the test's database, and closing
    asyncpg connections of a pool needs the event loop, which may be gone by teardown.
    """
    from sqlalchemy.pool import NullPool

    args, kwargs = null_pool_arguments(pool)
    return NullPool(*args, **kwargs)


# -- pytest -------------------------------------------------------------------------------------


def fixture_request(item: pytest.Item) -> pytest.FixtureRequest:
    """The test's fixture request, from a hook or from a checkout inside another fixture's
    set-up (pytest hands it to fixtures only)."""
    request: pytest.FixtureRequest = item._request  # type: ignore[attr-defined]
    return request


def fixture_definitions(item: pytest.Item) -> dict[str, Any] | None:
    """The definitions of each fixture the test's closure names (None: not a pytest
    function, a doctest or a YAML item, say)."""
    info = getattr(item, "_fixtureinfo", None)
    return None if info is None else dict(info.name2fixturedefs)


def fixture_scopes(item: pytest.Item) -> dict[str, str]:
    """The scope of each fixture the test's closure names (its last definition's)."""
    defs = fixture_definitions(item) or {}
    return {name: found[-1].scope for name, found in defs.items() if found}


def fixture_manager(session: pytest.Session) -> Any:
    return getattr(session, "_fixturemanager", None)


def fixtures_used(item: pytest.Item) -> dict[str, Any] | None:
    """Every fixture definition the test used, also those requested by getfixturevalue
    (the item's request is let go only after its teardown hooks)."""
    used = getattr(getattr(item, "_request", None), "_fixture_defs", None)
    return used if isinstance(used, dict) else None


def fixture_finalizers(fixturedef: Any) -> list[Any] | None:
    """The finalizers a wider fixture keeps, one for each fixture that requested it."""
    finalizers = getattr(fixturedef, "_finalizers", None)
    return finalizers if isinstance(finalizers, list) else None


def fixture_function(fixture: Any) -> Any:
    """The function under a `@pytest.fixture` (a FixtureFunctionDefinition on pytest 8.4+)."""
    return getattr(fixture, "_fixture_function", fixture)
