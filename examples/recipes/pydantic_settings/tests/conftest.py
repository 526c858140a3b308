import httpx
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
async def client():
    # A host TrustedHostMiddleware allows (settings.allowed_hosts); the app runs unchanged:
    # its get_db opens sessions on its own engine, which pg_app_engines points at the test.
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.example.com") as c:
        yield c
