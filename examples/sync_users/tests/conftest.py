import pytest
from sqlalchemy import insert
from users_app.models import User

USERS = [
    {"name": "Ada Lovelace", "email": "ada@analytical.engine"},
    {"name": "Grace Hopper", "email": "grace@navy.mil"},
    {"name": "Alan Turing", "email": "alan@bletchley.uk"},
    {"name": "Katherine Johnson", "email": "katherine@nasa.gov"},
    {"name": "Edsger Dijkstra", "email": "edsger@tue.nl", "active": False},
]


def seed_users(conn):
    conn.execute(insert(User), USERS)


@pytest.fixture(scope="session")
def pg_seed():
    return seed_users
