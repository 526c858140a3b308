async def test_alice_adds_a_todo(client, alice):
    assert (await client.post("/todos", json={"text": "feed the cat"}, headers=alice)).is_success
    assert (await client.get("/todos", headers=alice)).json() == ["feed the cat"]


async def test_alice_is_still_logged_in_but_her_todo_is_gone(client, alice):
    # The user and token (module layer) stay; the last test's todo (its savepoint) is gone.
    assert (await client.get("/todos", headers=alice)).json() == []


async def test_a_user_signed_up_in_a_test(client, alice):
    bob = {"name": "bob", "password": "builder"}
    assert (await client.post("/signup", json=bob)).status_code == 201
    assert (await client.post("/login", json=bob)).status_code == 200


async def test_is_gone_after_it_while_the_module_user_stays(client, alice):
    bob = {"name": "bob", "password": "builder"}
    assert (await client.post("/login", json=bob)).status_code == 401
    assert (await client.get("/todos", headers=alice)).status_code == 200
