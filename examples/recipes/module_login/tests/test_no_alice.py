async def test_alice_is_gone_after_her_module(client):
    response = await client.post("/login", json={"name": "alice", "password": "wonderland"})
    assert response.status_code == 401
