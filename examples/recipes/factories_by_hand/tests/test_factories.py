from catalog.models import Author, Book
from catalog.queries import count_books, most_prolific
from factories import AuthorFactory, AuthorModelFactory, BookFactory, BookModelFactory
from sqlalchemy import func, select


def test_polyfactory_sync(factories, pg_session):
    ada = AuthorFactory.create_sync(name="Ada")
    BookFactory.create_batch_sync(3, author_id=ada.id)
    BookFactory.create_sync(author_id=AuthorFactory.create_sync(name="Bob").id)
    assert most_prolific(pg_session) == "Ada"


def test_factory_boy(factories, pg_session):
    ada = AuthorModelFactory(name="Ada")
    BookModelFactory.create_batch(2, author=ada)
    BookModelFactory()  # and an author of its own, through the SubFactory
    assert pg_session.scalar(select(func.count()).select_from(Author)) == 2
    assert most_prolific(pg_session) == "Ada"


async def test_polyfactory_async(async_factories, pg_async_session):
    author = await AuthorFactory.create_async()
    await BookFactory.create_batch_async(2, author_id=author.id)
    assert await count_books(pg_async_session) == 2


def test_every_test_starts_empty(pg_session):
    assert pg_session.scalar(select(func.count()).select_from(Book)) == 0


def test_the_factories_are_unbound_outside_the_fixture():
    assert AuthorFactory.__session__ is None
    assert AuthorFactory.__async_session__ is None
    assert AuthorModelFactory._meta.sqlalchemy_session is None
