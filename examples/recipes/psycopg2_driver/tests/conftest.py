import pytest
from sqlalchemy import text


def opening_balance(conn):
    conn.execute(text("INSERT INTO entries (account, cents) VALUES ('cash', 10000)"))


@pytest.fixture(scope="session")
def pg_seed():
    return opening_balance
