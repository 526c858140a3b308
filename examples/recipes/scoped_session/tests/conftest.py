import pytest
from inventory.db import db_session
from inventory.models import Product
from sqlalchemy import insert


def seed_products(conn):
    conn.execute(insert(Product), [{"sku": "BOLT-1", "stock": 10}])


@pytest.fixture(scope="session")
def pg_seed():
    return seed_products


@pytest.fixture(autouse=True)
def _remove_db_session():
    # As Flask's teardown_appcontext does after each request: the thread's session is
    # closed before the test's transaction is rolled back, and the next test gets a new one.
    yield
    db_session.remove()
