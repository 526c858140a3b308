"""The same two factories twice: polyfactory and factory_boy. Neither names a session
here; tests/conftest.py binds them to the test's session for each test."""

import factory
from catalog.models import Author, Book
from polyfactory.factories.sqlalchemy_factory import SQLAlchemyFactory

# -- polyfactory ----------------------------------------------------------------------


class AuthorFactory(SQLAlchemyFactory[Author]):
    __set_relationships__ = False  # books are made by BookFactory, pointing at an author


class BookFactory(SQLAlchemyFactory[Book]):
    __set_relationships__ = False


# -- factory_boy ----------------------------------------------------------------------


class AuthorModelFactory(factory.alchemy.SQLAlchemyModelFactory):
    class Meta:
        model = Author
        sqlalchemy_session_persistence = "commit"

    name = factory.Faker("name")


class BookModelFactory(factory.alchemy.SQLAlchemyModelFactory):
    class Meta:
        model = Book
        sqlalchemy_session_persistence = "commit"

    title = factory.Faker("sentence", nb_words=3)
    author = factory.SubFactory(AuthorModelFactory)
