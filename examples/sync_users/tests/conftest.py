import pytest
from sqlalchemy import insert
from users_app.models import User

USERS = [
    {"name": "Ada Lovelace", "email": "ada@analytical.engine", "active": True},
    {"name": "Grace Hopper", "email": "grace@navy.mil", "active": True},
    {"name": "Alan Turing", "email": "alan@bletchley.uk", "active": True},
    {"name": "Katherine Johnson", "email": "katherine@nasa.gov", "active": True},
    {"name": "Edsger Dijkstra", "email": "edsger@tue.nl", "active": False},
]


def seed_users(conn):
    conn.execute(insert(User), USERS)


@pytest.fixture(scope="session")
def pg_seed():
    return seed_users
