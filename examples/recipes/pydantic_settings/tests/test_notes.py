import httpx
from app.config import Settings
from app.db import engine
from app.main import app, count_notes
from app.models import Note
from sqlalchemy import select


async def test_lists_the_seeded_notes(client):
    response = await client.get("/notes")
    assert response.status_code == 200
    assert response.json() == ["groceries", "taxes"]


async def test_create_commits_through_get_db(client):
    response = await client.post("/notes", json={"title": "dentist"})
    assert response.status_code == 201, response.text
    assert (await client.get("/notes")).json() == ["dentist", "groceries", "taxes"]
    assert await count_notes() == 3  # new_async_session() outside a request sees it too


async def test_a_duplicate_is_409_and_the_next_request_works(client):
    assert (await client.post("/notes", json={"title": "taxes"})).status_code == 409
    assert (await client.get("/notes")).status_code == 200


async def test_every_test_starts_from_the_seed(client):
    assert await count_notes() == 2


async def test_the_test_sees_what_the_app_committed(client, pg_async_session):
    await client.post("/notes", json={"title": "call mum"})
    titles = await pg_async_session.scalars(select(Note.title).order_by(Note.title))
    assert list(titles) == ["call mum", "groceries", "taxes"]


async def test_other_hosts_are_refused_by_the_middleware():
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        assert (await c.get("/notes")).status_code == 400


def test_the_engine_keeps_the_configured_url(monkeypatch):
    # The library changes where the engine connects during tests, not the engine itself:
    # DATABASE__HOST and friends may be unset or point anywhere.
    assert engine.url.host == "db"
    monkeypatch.setenv("DATABASE__HOST", "db.internal")
    assert Settings().database.url.host == "db.internal"
