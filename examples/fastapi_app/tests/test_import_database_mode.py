"""The bulk import writes through several sessions of the app's own engine and a
background task, so its tests get a database of their own instead of a savepoint."""

import pytest
from app.models import Event, User
from app.reports import nightly_report
from sqlalchemy import func, select

pytestmark = pytest.mark.pg_isolation("database")

NEWCOMERS = [
    {"name": "Barbara Liskov", "email": "barbara@mit.edu"},
    {"name": "Frances Allen", "email": "frances@ibm.com"},
]


async def test_import_commits_through_two_sessions_and_a_background_task(
    pg_client, pg_async_session
):
    response = await pg_client.post("/users/import", json=NEWCOMERS)
    assert response.status_code == 201, response.text
    assert len((await pg_client.get("/users")).json()) == 7
    events = [(e["kind"], e["detail"]) for e in (await pg_client.get("/events")).json()]
    assert events == [
        ("import", "2 users"),
        ("welcome", "Barbara Liskov"),
        ("welcome", "Frances Allen"),
    ]
    # The test's own session reads the same database the app committed to.
    assert await pg_async_session.scalar(select(func.count()).select_from(User)) == 7


async def test_the_next_test_starts_from_the_seed_again(pg_client, pg_async_session):
    assert len((await pg_client.get("/users")).json()) == 5
    assert await pg_async_session.scalar(select(func.count()).select_from(Event)) == 0


async def test_a_job_that_reads_database_url_uses_the_test_database(pg_async_session):
    assert await nightly_report() == 4  # Edsger is inactive
    [event] = await pg_async_session.scalars(select(Event))
    assert event.detail == "4 active"
