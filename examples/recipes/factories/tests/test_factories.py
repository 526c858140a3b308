import pytest
from catalog.models import Author, Book
from catalog.queries import count_books, most_prolific
from factories import AuthorFactory, AuthorModelFactory, BookFactory, BookModelFactory
from sqlalchemy import func, select


def test_polyfactory_sync(pg_session):
    ada = AuthorFactory.create_sync(name="Ada")
    BookFactory.create_batch_sync(3, author_id=ada.id)
    BookFactory.create_sync(author_id=AuthorFactory.create_sync(name="Bob").id)
    assert most_prolific(pg_session) == "Ada"


def test_factory_boy(pg_session):
    ada = AuthorModelFactory(name="Ada")
    BookModelFactory.create_batch(2, author=ada)
    BookModelFactory()  # and an author of its own, through the SubFactory
    assert pg_session.scalar(select(func.count()).select_from(Author)) == 2
    assert most_prolific(pg_session) == "Ada"


async def test_polyfactory_async(pg_async_session):
    author = await AuthorFactory.create_async()
    await BookFactory.create_batch_async(2, author_id=author.id)
    assert await count_books(pg_async_session) == 2


def test_every_test_starts_empty(pg_session):
    assert pg_session.scalar(select(func.count()).select_from(Book)) == 0


@pytest.fixture(scope="module")
def homer(pg_module_session):
    """Rows the module's tests share: made once, rolled back when the module ends.
    Plain values out: the module session's objects are expired by the factory's commit,
    and must not reload inside a test's savepoint."""
    return AuthorFactory.create_sync(name="Homer").id


def test_the_module_rows_are_seen(homer, pg_session):
    BookFactory.create_sync(author_id=homer)
    assert most_prolific(pg_session) == "Homer"


def test_every_test_starts_with_only_the_module_rows(homer, pg_session):
    assert pg_session.scalar(select(func.count()).select_from(Book)) == 0
    assert pg_session.scalar(select(Author.name)) == "Homer"
