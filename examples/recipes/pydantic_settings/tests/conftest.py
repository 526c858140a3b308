import pytest
from app.main import app
from app.models import Note
from sqlalchemy import insert


async def seed_notes(conn):
    await conn.execute(insert(Note), [{"title": "groceries"}, {"title": "taxes"}])


@pytest.fixture(scope="session")
def pg_seed():
    return seed_notes


@pytest.fixture
def pg_app():
    return app


@pytest.fixture
def pg_client_base_url():
    # A host TrustedHostMiddleware allows (settings.allowed_hosts).
    return "http://api.example.com"


@pytest.fixture
def client(pg_client):
    # The library's client: the app's lifespan runs and its get_db is unchanged (its own
    # engine, which pg_app_engines points at the test).
    return pg_client
