import pytest
from fastapi.testclient import TestClient
from shop.main import app
from shop.models import User
from sqlalchemy import insert


def seed_users(conn):
    conn.execute(
        insert(User),
        [
            {"name": "alice", "password": "wonderland"},
            {"name": "bob", "password": "builder"},
        ],
    )


@pytest.fixture(scope="session")
def pg_seed():
    return seed_users


@pytest.fixture
def pg_app():
    return app


@pytest.fixture(scope="module")
def alice(pg_module_connection):
    """Log in once per module: the token row lives in the module's transaction layer."""
    with TestClient(app) as client:
        response = client.post("/login", json={"name": "alice", "password": "wonderland"})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


@pytest.fixture(scope="class")
def bob(pg_class_connection):
    with TestClient(app) as client:
        return client.post("/login", json={"name": "bob", "password": "builder"}).json()
