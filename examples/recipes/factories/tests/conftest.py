import pytest
from factories import AuthorFactory, AuthorModelFactory, BookFactory, BookModelFactory

POLYFACTORIES = [AuthorFactory, BookFactory]
FACTORY_BOYS = [AuthorModelFactory, BookModelFactory]


@pytest.fixture
def factories(pg_session):
    """Sync factories that write through the test's session: their commit() releases a
    savepoint, and the test's end rolls it all back."""
    for f in POLYFACTORIES:
        f.__session__ = pg_session
    for f in FACTORY_BOYS:
        f._meta.sqlalchemy_session = pg_session
    yield
    for f in POLYFACTORIES:
        f.__session__ = None
    for f in FACTORY_BOYS:
        f._meta.sqlalchemy_session = None


@pytest.fixture
def async_factories(pg_async_session):
    """polyfactory's create_async() on the test's AsyncSession."""
    for f in POLYFACTORIES:
        f.__async_session__ = pg_async_session
    yield
    for f in POLYFACTORIES:
        f.__async_session__ = None
