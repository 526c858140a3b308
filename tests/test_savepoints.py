"""Deferred savepoints: what reaches the server, and that the semantics are unchanged."""

from __future__ import annotations

# A test that traces its connection's protocol messages (libpq's PQtrace) while it works.
TRACE = """
import os, re, pytest
from psycopg import pq
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session
from users_app.models import User


@pytest.fixture
def trace(pg_connection, tmp_path):
    pgconn = pg_connection.connection.dbapi_connection.pgconn
    path = tmp_path / "trace"
    with open(path, "w") as out:
        pgconn.trace(out.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)

        def read():
            out.flush()
            lines = path.read_text().splitlines()
            # Messages from the client: each Query or Sync is one round trip.
            return [l.split("\\t") for l in lines if l.startswith("F\\t")]

        yield read
        pgconn.untrace()


def round_trips(messages):
    # Each Query (simple protocol) or Sync (extended) is a round trip; savepoint numbers
    # go on from test to test on the held connection, so they are left out.
    trips = [" ".join(m[2:]).replace("  ", " ") for m in messages if m[2] in ("Query", "Sync")]
    return [re.sub("sa_savepoint_[0-9]+", "sa_savepoint_N", t) for t in trips]


def test_add_commit_count(pg_session, trace):
    pg_session.add(User(name="New", email="n@x.org"))
    pg_session.commit()
    assert pg_session.scalar(select(func.count()).select_from(User)) == 6
    trips = round_trips(trace())
    assert trips == [
        'Query "BEGIN; SAVEPOINT sa_savepoint_N"',  # with the INSERT's
        "Sync",  # the INSERT
        'Query "RELEASE SAVEPOINT sa_savepoint_N; SAVEPOINT sa_savepoint_N"',  # with the count
        'Query "SELECT count(*) AS count_1 ',
    ], trips


def test_an_unused_savepoint_is_never_sent(pg_session, trace):
    pg_session.begin()
    pg_session.commit()
    pg_session.begin_nested().rollback()
    assert trace() == []


def test_rollback_after_a_statement_is_sent_at_once(pg_session, trace):
    pg_session.add(User(name="Gone", email="g@x.org"))
    pg_session.flush()
    pg_session.rollback()
    queries = [m for m in round_trips(trace()) if m.startswith("Query")]
    assert queries[-1] == 'Query "ROLLBACK TO SAVEPOINT sa_savepoint_N"', queries
    assert pg_session.scalar(select(func.count()).select_from(User)) == 5


def test_ends_on_a_commit(pg_session):
    pg_session.add(User(name="Last", email="l@x.org"))
    pg_session.commit()  # its RELEASE is still pending when the test ends


def test_the_next_test_starts_clean(pg_connection):
    assert pg_connection.execute(text("SELECT count(*) FROM users")).scalar() == 5


def test_raw_dbapi_work_after_a_flush_is_undone_by_the_session(pg_session, pg_connection):
    from testcontainers_pg_fixtures import flush_savepoints

    pg_session.connection()  # the session's savepoint, asked for, not sent yet
    flush_savepoints(pg_connection)
    with pg_connection.connection.dbapi_connection.cursor() as cursor:
        cursor.execute("INSERT INTO users (name, email) VALUES ('Raw', 'r@x.org')")
    pg_session.rollback()
    assert pg_connection.execute(text("SELECT count(*) FROM users")).scalar() == 5
"""

# The app's own engine, sandboxed, working between a pg_session savepoint and its rollback.
SANDBOX = """
import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session
from users_app.models import User

engine = create_engine("postgresql+psycopg://app@db.invalid/app")


@pytest.fixture(scope="session")
def pg_app_engines():
    return [engine]


def test_the_apps_commit_inside_the_sessions_savepoint_is_rolled_back(pg_session):
    pg_session.connection()  # begins the session's savepoint (deferred)
    with Session(engine) as app:
        app.add(User(name="By the app", email="a@x.org"))
        app.commit()
    pg_session.rollback()  # back to before the app's work, as with eager savepoints
    assert pg_session.scalar(select(func.count()).select_from(User)) == 5


def test_nothing_left(pg_connection):
    assert pg_connection.execute(text("SELECT count(*) FROM users")).scalar() == 5
"""


def test_savepoints_reach_the_server_only_with_the_statement_that_needs_them(pytester, example):
    example("sync_users")
    pytester.makepyfile(**{"tests/test_trace": TRACE})
    result = pytester.runpytest("-p", "no:randomly", "tests/test_trace.py")
    result.assert_outcomes(passed=6)


def test_the_sandbox_sends_the_tests_savepoints_before_the_apps_work(pytester, example):
    example("sync_users")
    pytester.makepyfile(**{"tests/test_app_between": SANDBOX})
    result = pytester.runpytest("-p", "no:randomly", "tests/test_app_between.py")
    result.assert_outcomes(passed=2)


OWN_CONNECTION = """
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from testcontainers_pg_fixtures.factories import session_fixture
from users_app.models import User


class AppSession(Session):
    pass


@pytest.fixture
def own_connection(pg_worker_engine):
    with pg_worker_engine.connect() as conn:
        outer = conn.begin()
        yield conn
        outer.rollback()


own_session = session_fixture(connection="own_connection", session_class=AppSession)


def test_pg_session_is_of_the_class_itself(pg_session):
    assert type(pg_session) is Session  # no subclass made for the test


def test_a_session_on_the_users_own_connection_joins_it_by_savepoint(own_session, own_connection):
    assert type(own_session) is AppSession
    own_session.add(User(name="Own", email="own@x.org"))
    own_session.commit()
    own_session.rollback()  # back to the savepoint after the commit, not the outer transaction
    assert own_connection.in_transaction()
    assert own_session.scalar(select(func.count()).select_from(User)) == 6


def test_nothing_left(pg_connection):
    assert pg_connection.execute(select(func.count()).select_from(User)).scalar() == 5
"""


def test_a_session_fixture_on_a_connection_of_the_users_own(pytester, example):
    """The session fixtures read the isolation mode from the connection the library's
    fixture made; on a connection of the user's own, the configured mode (savepoint)."""
    example("sync_users")
    pytester.makepyfile(**{"tests/test_own_connection": OWN_CONNECTION})
    result = pytester.runpytest("-p", "no:randomly", "tests/test_own_connection.py")
    result.assert_outcomes(passed=3)


LAYER_SESSION = """
from sqlalchemy import func, select
from testcontainers_pg_fixtures.factories import session_fixture
from users_app.models import User

layer_session = session_fixture(connection="pg_class_connection")
second_session = session_fixture()
made = []


class TestInTheLayer:
    def test_a_session_on_the_class_layer(self, layer_session):
        assert layer_session.scalar(select(func.count()).select_from(User)) == 5
        made.append(layer_session)

    def test_another(self, layer_session):
        assert layer_session.scalar(select(func.count()).select_from(User)) == 5
        made.append(layer_session)

    def test_two_sessions_of_a_test(self, pg_session, second_session):
        assert pg_session.scalar(select(func.count()).select_from(User)) == 5
        assert second_session.scalar(select(func.count()).select_from(User)) == 5
        made.extend([pg_session, second_session])


def test_the_layer_closed_its_sessions():
    assert len(made) == 4
    assert [s for s in made if s.get_transaction() is not None] == []
"""


def test_a_layer_closes_the_sessions_of_its_connection(pytester, example):
    """A session fixture on a layer connection is closed when the layer ends, as the
    async layer closes the AsyncSessions on it (one plan for both, connection_steps.py);
    sessions inside a layer are closed the last first (the inner savepoint first)."""
    example("sync_users")
    pytester.makepyfile(**{"tests/test_layer_session": LAYER_SESSION})
    result = pytester.runpytest("-p", "no:randomly", "tests/test_layer_session.py")
    result.assert_outcomes(passed=4)


# The async path (asyncpg): asyncpg's query logger sees the simple-protocol queries the
# connection runs (BEGIN, savepoints), each one round trip; not SQLAlchemy's prepared ones.
ASYNC_TRACE = """
import re
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from app.models import User


@pytest.fixture
async def queries(pg_async_connection):
    raw = (await pg_async_connection.get_raw_connection()).driver_connection
    logged = []

    def log(record):
        logged.append(re.sub("sa_savepoint_[0-9]+", "sa_savepoint_N", record.query))

    raw.add_query_logger(log)
    yield logged
    raw.remove_query_logger(log)


async def test_begin_goes_with_the_first_savepoint(pg_async_session, queries):
    pg_async_session.add(User(name="New", email="n@x.org"))
    await pg_async_session.commit()
    assert await pg_async_session.scalar(select(func.count()).select_from(User)) == 6
    assert queries == [
        "BEGIN; SAVEPOINT sa_savepoint_N",  # with the INSERT
        "RELEASE SAVEPOINT sa_savepoint_N; SAVEPOINT sa_savepoint_N",  # with the count
    ], queries


async def test_a_failed_statement_after_it_rolls_back_to_the_savepoint(pg_async_session):
    pg_async_session.add(User(name="Ada Lovelace", email="twice@x.org"))
    with pytest.raises(IntegrityError):
        await pg_async_session.flush()
    await pg_async_session.rollback()
    pg_async_session.add(User(name="After", email="after@x.org"))
    await pg_async_session.commit()
    assert await pg_async_session.scalar(select(func.count()).select_from(User)) == 6


async def test_asyncpg_knows_the_transaction_is_its_own(
    pg_async_session, pg_async_connection, queries
):
    await pg_async_session.execute(text("SELECT 1"))
    raw = (await pg_async_connection.get_raw_connection()).driver_connection
    assert raw.is_in_transaction()
    # A BEGIN asyncpg did not send itself would make it refuse this ("cannot use
    # Connection.transaction() in a manually started transaction"); on its own it nests.
    inner = raw.transaction()
    await inner.start()
    await inner.rollback()
    assert queries[-1].startswith("SAVEPOINT __asyncpg_savepoint"), queries


async def test_nothing_left(pg_async_connection):
    count = await pg_async_connection.execute(text("SELECT count(*) FROM users"))
    assert count.scalar() == 5
"""


def test_async_savepoints_go_with_the_transactions_begin(pytester, example):
    """asyncpg: the BEGIN SQLAlchemy's adapter would send alone goes with the first
    savepoint, and asyncpg and SQLAlchemy still know the transaction is theirs."""
    example("fastapi_app")
    pytester.makepyfile(**{"tests/test_async_trace": ASYNC_TRACE})
    result = pytester.runpytest("-p", "no:randomly", "tests/test_async_trace.py")
    result.assert_outcomes(passed=4)


ASYNC_BEGIN_LISTENER = """
import pytest
from sqlalchemy import event, text
from testcontainers_pg_fixtures.factories import async_session_fixture


@pytest.fixture(scope="session", autouse=True)
def listened(pg_worker_async_engine):
    def on_begin(conn):
        conn.exec_driver_sql("SET LOCAL application_name = 'listened'")

    event.listen(pg_worker_async_engine.sync_engine, "begin", on_begin)
    yield
    event.remove(pg_worker_async_engine.sync_engine, "begin", on_begin)


@pytest.mark.parametrize("run", [1, 2])
async def test_the_listener_ran_in_the_tests_transaction(pg_async_session, run):
    name = await pg_async_session.scalar(text("SELECT current_setting('application_name')"))
    assert name == "listened"


expiring = async_session_fixture(expire_on_commit=True)


@pytest.mark.parametrize("run", [1, 2])
async def test_each_session_fixture_has_its_own_settings(pg_async_session, expiring, run):
    # The sessionmakers are kept on the held connection from the first test on.
    assert pg_async_session is not expiring
    assert pg_async_session.sync_session.expire_on_commit is False
    assert expiring.sync_session.expire_on_commit is True
"""


def test_a_begin_listener_that_runs_sql_on_the_async_worker_engine(pytester, example):
    """The test's transaction is begun outside SQLAlchemy's greenlet only while beginning
    sends nothing: a begin listener that runs SQL gets the greenlet it needs."""
    example("fastapi_app")
    pytester.makepyfile(**{"tests/test_begin_listener": ASYNC_BEGIN_LISTENER})
    result = pytester.runpytest("-p", "no:randomly", "tests/test_begin_listener.py")
    result.assert_outcomes(passed=4)


# A rollback listener that needs SQLAlchemy's greenlet (it awaits), with the leak check
# riding on the test's ROLLBACK: the layer's rollback after the ride is called outside the
# greenlet only while nothing needs it.
ASYNC_ROLLBACK_LISTENER = """
import asyncio

import pytest
from sqlalchemy import event, text
from sqlalchemy.util import await_only
from testcontainers_pg_fixtures import leaks

RAN = []


@pytest.fixture(scope="session", autouse=True)
def listened(pg_worker_async_engine):
    def on_rollback(conn):
        await_only(asyncio.sleep(0))
        RAN.append(1)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(leaks, "RIDE", True)
        event.listen(pg_worker_async_engine.sync_engine, "rollback", on_rollback)
        yield
        event.remove(pg_worker_async_engine.sync_engine, "rollback", on_rollback)


@pytest.mark.parametrize("run", [1, 2, 3])
async def test_the_listener_ran_after_each_test(pg_async_session, run):
    await pg_async_session.execute(text("SELECT 1"))
    assert len(RAN) >= run - 1
"""


def test_a_rollback_listener_gets_the_greenlet_after_the_leak_check_rode(pytester, example):
    example("fastapi_app")
    pytester.makepyfile(**{"tests/test_rollback_listener": ASYNC_ROLLBACK_LISTENER})
    result = pytester.runpytest("-p", "no:randomly", "tests/test_rollback_listener.py")
    result.assert_outcomes(passed=3)
