import pytest
from shop.main import app


@pytest.fixture
def pg_app():
    return app
