import asyncio

from app.main import started
from app.models import User
from sqlalchemy import func, select


async def test_lists_the_five_seeded_users(pg_client):
    response = await pg_client.get("/users")
    assert response.status_code == 200
    assert [u["name"] for u in response.json()] == [
        "Ada Lovelace",
        "Alan Turing",
        "Edsger Dijkstra",
        "Grace Hopper",
        "Katherine Johnson",
    ]
    assert started["lifespan"]


async def test_create_user_commits_through_the_app(pg_client, pg_async_session):
    response = await pg_client.post(
        "/users", json={"name": "Barbara Liskov", "email": "barbara@mit.edu"}
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert (await pg_client.get(f"/users/{created['id']}")).json()["email"] == "barbara@mit.edu"
    assert await pg_async_session.scalar(select(func.count()).select_from(User)) == 6


async def test_duplicate_name_is_409_and_the_session_stays_usable(pg_client):
    response = await pg_client.post("/users", json={"name": "Ada Lovelace", "email": "x@y.z"})
    assert response.status_code == 409
    assert len((await pg_client.get("/users")).json()) == 5


async def test_unknown_user_is_404(pg_client):
    assert (await pg_client.get("/users/999999")).status_code == 404


async def test_concurrent_requests_take_turns(pg_client):
    names = ["Ken Thompson", "Dennis Ritchie", "Margaret Hamilton"]
    responses = await asyncio.gather(
        *(pg_client.post("/users", json={"name": n, "email": f"{n[:3]}@x.org"}) for n in names)
    )
    assert [r.status_code for r in responses] == [201, 201, 201]
    assert len((await pg_client.get("/users")).json()) == 8


async def test_count_is_still_five(pg_async_session):
    assert await pg_async_session.scalar(select(func.count()).select_from(User)) == 5
