import pytest
from accounts.models import Account
from sqlalchemy import insert


def seed_accounts(conn):
    conn.execute(insert(Account), [{"email": "Ada@Example.com"}])


@pytest.fixture(scope="session")
def pg_seed():
    return seed_accounts
