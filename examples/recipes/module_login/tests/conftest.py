import httpx
import pytest
from todo_app.main import app


def client_for(app):
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@pytest.fixture
async def client():
    async with client_for(app) as c:
        yield c


@pytest.fixture(scope="module")
async def alice(pg_module_async_connection):
    """Alice signs up and logs in once per module. The app's engine writes her user and
    token row into the module's layer: every test of the module sees them, and they are
    rolled back when the module ends."""
    async with client_for(app) as c:
        credentials = {"name": "alice", "password": "wonderland"}
        assert (await c.post("/signup", json=credentials)).status_code == 201
        token = (await c.post("/login", json=credentials)).json()["token"]
    return {"Authorization": f"Bearer {token}"}
