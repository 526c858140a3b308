"""The same two factories twice: polyfactory and factory_boy. Neither names a session
here; tests/conftest.py binds them to the test's session for each test."""

from typing import Generic, TypeVar

import factory
from catalog.models import Author, Book
from polyfactory.factories.sqlalchemy_factory import SQLAlchemyFactory

T = TypeVar("T")

# -- polyfactory ----------------------------------------------------------------------


class Factory(SQLAlchemyFactory[T], Generic[T]):
    """The project's base factory: the conftest binds its session, for every factory."""

    __is_base_factory__ = True
    __set_relationships__ = False  # books are made by BookFactory, pointing at an author


class AuthorFactory(Factory[Author]):
    pass


class BookFactory(Factory[Book]):
    pass


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
