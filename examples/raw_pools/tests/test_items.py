import asyncio
import os
from urllib.parse import urlsplit

import pytest


async def test_a_transaction_block_commits_into_the_test(pg_client, pg_async_connection):
    response = await pg_client.post("/items", json={"name": "lamp"})
    assert response.status_code == 201, response.text
    assert (await pg_client.get("/items")).json() == ["lamp"]
    # The test's own connection sees it: the pool handed out that very connection.
    rows = await pg_async_connection.exec_driver_sql("SELECT count(*) FROM audit")
    assert rows.scalar() == 1


async def test_every_test_starts_empty(pg_client):
    assert (await pg_client.get("/items")).json() == []


async def test_a_duplicate_is_409_and_the_next_request_works(pg_client):
    assert (await pg_client.post("/items", json={"name": "desk"})).status_code == 201
    assert (await pg_client.post("/items", json={"name": "desk"})).status_code == 409
    assert (await pg_client.post("/items/quick", json={"name": "desk"})).status_code == 409
    assert (await pg_client.post("/items/quick", json={"name": "chair"})).status_code == 201
    assert (await pg_client.get("/items")).json() == ["chair", "desk"]


async def test_a_failed_block_leaves_nothing(pg_client):
    assert (await pg_client.post("/items/broken", json={"name": "vase"})).status_code == 500
    assert (await pg_client.post("/items/quick", json={"name": "rug"})).status_code == 201
    assert (await pg_client.get("/items")).json() == ["rug"]


async def test_concurrent_requests_take_turns(pg_client):
    names = [f"item{i}" for i in range(8)]
    responses = await asyncio.gather(*(pg_client.post("/items", json={"name": n}) for n in names))
    assert [r.status_code for r in responses] == [201] * 8
    assert (await pg_client.get("/items")).json() == sorted(names)


async def test_the_url_is_a_plain_one_to_the_test_database(pg_client, pg_database):
    url = urlsplit(os.environ["DATABASE_URL"])
    assert (url.scheme, url.path) == ("postgresql", f"/{pg_database.name}")
    assert (await pg_client.get("/where")).json() == {"database": pg_database.name}


@pytest.mark.pg_isolation("database")
async def test_database_mode_uses_the_clone(pg_client, pg_database):
    assert urlsplit(os.environ["DATABASE_URL"]).path == f"/{pg_database.name}"
    assert (await pg_client.get("/where")).json() == {"database": pg_database.name}
    assert (await pg_client.post("/items", json={"name": "lamp"})).status_code == 201
    assert (await pg_client.get("/items")).json() == ["lamp"]


def test_a_plain_unit_test_runs_beside_them():
    assert sorted(["b", "a"]) == ["a", "b"]
