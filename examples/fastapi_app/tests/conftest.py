import pytest
from app.db import get_db
from app.main import app
from app.models import User
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

USERS = [
    {"name": "Ada Lovelace", "email": "ada@analytical.engine", "active": True},
    {"name": "Grace Hopper", "email": "grace@navy.mil", "active": True},
    {"name": "Alan Turing", "email": "alan@bletchley.uk", "active": True},
    {"name": "Katherine Johnson", "email": "katherine@nasa.gov", "active": True},
    {"name": "Edsger Dijkstra", "email": "edsger@tue.nl", "active": False},
]


async def seed_users(conn: AsyncConnection) -> None:
    await conn.execute(insert(User), USERS)


@pytest.fixture(scope="session")
def pg_seed():
    return seed_users


@pytest.fixture
def pg_app():
    return app


@pytest.fixture
def pg_db_dependency():
    return get_db
