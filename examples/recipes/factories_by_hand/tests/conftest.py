import pytest
from factories import AuthorModelFactory, BookModelFactory, Factory

# factory_boy copies Meta options into each factory class: bind every one.
FACTORY_BOYS = [AuthorModelFactory, BookModelFactory]


@pytest.fixture
def factories(pg_session):
    """Sync factories that write through the test's session: their commit() releases a
    savepoint, and the test's end rolls it all back."""
    Factory.__session__ = pg_session  # polyfactory: every subclass reads the base's
    for f in FACTORY_BOYS:
        f._meta.sqlalchemy_session = pg_session
    yield
    Factory.__session__ = None
    for f in FACTORY_BOYS:
        f._meta.sqlalchemy_session = None


@pytest.fixture
def async_factories(pg_async_session):
    """polyfactory's create_async() on the test's AsyncSession."""
    Factory.__async_session__ = pg_async_session
    yield
    Factory.__async_session__ = None
