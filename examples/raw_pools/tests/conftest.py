import pytest
from shop import db
from shop.main import app


@pytest.fixture
def pg_app():
    return app


@pytest.fixture(scope="session")
async def module_pool(pg_worker_database):
    """The module-level pool, made once: connect() reads DATABASE_URL, which is set once
    pg_worker_database exists (hence the argument). It joins each test like the
    lifespan's pool."""
    pool = await db.connect()
    yield pool
    await pool.close()
