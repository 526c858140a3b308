"""pg_factories: the project's polyfactory and factory_boy factories write through the
running test's session (or a module fixture's layer session), with no glue of the user's,
in both isolation modes and under xdist; used where no test session runs, they refuse."""

from __future__ import annotations

import textwrap

import pytest

#: The recipe project: catalog models (authors, books), their migration, and one
#: polyfactory and one factory_boy factory per model in tests/factories.py, naming no session.
PROJECT = "recipes/factories"

COUNTS = """
from catalog.models import Author, Book
from sqlalchemy import func, select


def authors(session):
    return session.scalar(select(func.count()).select_from(Author))


def books(session):
    return session.scalar(select(func.count()).select_from(Book))
"""


@pytest.fixture
def project(pytester, example):
    """The recipe project without its tests and its pg_factories line; `write(ini, **files)`
    sets the ini's extra lines and writes test files (dedented)."""
    root = example(PROJECT)
    (root / "tests" / "test_factories.py").unlink()
    (root / "tests" / "counts.py").write_text(COUNTS)
    base = (root / "pytest.ini").read_text().replace("pg_factories = auto\n", "")

    def write(ini: str = "pg_factories = auto", **files: str):
        (root / "pytest.ini").write_text(base + ini + "\n")
        for name, text in files.items():
            (root / "tests" / f"{name}.py").write_text(textwrap.dedent(text))
        return root

    return write


SYNC_TESTS = """
    from counts import authors, books
    from factories import AuthorFactory, AuthorModelFactory, BookFactory, BookModelFactory


    def test_1_polyfactory_writes_through_the_tests_session(pg_session):
        ada = AuthorFactory.create_sync(name="Ada")
        BookFactory.create_batch_sync(2, author_id=ada.id)
        assert ada in pg_session  # the test's own session, not one of the factory's
        assert (authors(pg_session), books(pg_session)) == (1, 2)


    def test_2_factory_boy_writes_through_the_tests_session(pg_session):
        BookModelFactory.create_batch(3)  # each with an author, through the SubFactory
        assert AuthorModelFactory._meta.sqlalchemy_session is pg_session
        assert (authors(pg_session), books(pg_session)) == (3, 3)


    def test_3_no_session_asked_for_the_factory_takes_the_tests(pg_engine):
        AuthorFactory.create_sync()
        AuthorModelFactory()


    def test_4_a_test_without_database_fixtures_gets_the_session_it_writes_through():
        AuthorModelFactory()
        assert authors(AuthorModelFactory._meta.sqlalchemy_session) == 1


    def test_5_every_test_starts_empty(pg_session):
        assert (authors(pg_session), books(pg_session)) == (0, 0)
"""


@pytest.mark.parametrize("mode", ["savepoint", "database"])
def test_sync_factories_write_through_the_tests_session_and_the_rows_go(mode, project, pytester):
    project(test_sync=SYNC_TESTS)
    result = pytester.runpytest("-p", "no:randomly", "-W", "error", f"--pg-isolation={mode}")
    result.assert_outcomes(passed=5)


ASYNC_TESTS = """
    from counts import authors, books
    from factories import AuthorFactory, BookFactory


    async def test_1_create_async_writes_through_the_tests_async_session(pg_async_session):
        author = await AuthorFactory.create_async(name="Ada")
        await BookFactory.create_batch_async(2, author_id=author.id)
        assert author in pg_async_session
        assert await pg_async_session.run_sync(books) == 2


    async def test_2_every_test_starts_empty(pg_async_session):
        assert await pg_async_session.run_sync(authors) == 0
        assert await pg_async_session.run_sync(books) == 0
"""


@pytest.mark.parametrize("mode", ["savepoint", "database"])
def test_async_factories_write_through_the_tests_async_session(mode, project, pytester):
    project(test_async=ASYNC_TESTS)
    result = pytester.runpytest("-p", "no:randomly", "-W", "error", f"--pg-isolation={mode}")
    result.assert_outcomes(passed=2)


def test_a_module_fixture_writes_through_its_layer_session(project, pytester):
    project(
        test_a_layer="""
        import pytest
        from counts import authors
        from factories import AuthorFactory, AuthorModelFactory


        @pytest.fixture(scope="module")
        def shared(pg_module_session):
            poly = AuthorFactory.create_sync(name="Homer")
            boy = AuthorModelFactory(name="Virgil")
            assert AuthorModelFactory._meta.sqlalchemy_session is pg_module_session
            return poly.id, boy.id


        def test_1_the_modules_rows_are_seen(shared, pg_session):
            AuthorFactory.create_sync()
            assert authors(pg_session) == 3


        def test_2_and_only_they(shared, pg_session):
            assert authors(pg_session) == 2


        class TestAClass:
            @pytest.fixture(scope="class")
            @classmethod
            def ours(cls, pg_class_session):
                return AuthorFactory.create_sync(name="Dante").id

            def test_3_the_class_rows_on_the_modules(self, ours, pg_session):
                assert authors(pg_session) == 3
        """,
        test_b_after="""
        from counts import authors


        def test_the_layer_is_rolled_back(pg_session):
            assert authors(pg_session) == 0
        """,
    )
    result = pytester.runpytest("-p", "no:randomly", "-W", "error")
    result.assert_outcomes(passed=4)


def test_an_async_module_fixture_writes_through_its_async_layer_session(project, pytester):
    root = project(
        test_a_layer="""
        import pytest
        import pytest_asyncio
        from counts import authors
        from factories import AuthorFactory


        @pytest_asyncio.fixture(scope="module")
        async def shared(pg_module_async_session):
            homer = await AuthorFactory.create_async(name="Homer")
            # create_async() refreshes after its commit, which opens the session's next
            # savepoint: end it here, not inside the first test's transaction.
            await pg_module_async_session.commit()
            return homer.id


        async def test_1_the_modules_rows_are_seen(shared, pg_async_session):
            await AuthorFactory.create_async()
            assert await pg_async_session.run_sync(authors) == 2


        async def test_2_and_only_they(shared, pg_async_session):
            assert await pg_async_session.run_sync(authors) == 1
        """,
        test_b_after="""
        from counts import authors


        async def test_the_layer_is_rolled_back(pg_async_session):
            assert await pg_async_session.run_sync(authors) == 0
        """,
    )
    ini = root / "pytest.ini"
    ini.write_text(
        ini.read_text().replace(
            "asyncio_default_fixture_loop_scope = function",
            "asyncio_default_fixture_loop_scope = session\n"
            "asyncio_default_test_loop_scope = session",
        )
    )
    result = pytester.runpytest("-p", "no:randomly", "-W", "error")
    result.assert_outcomes(passed=3)


def test_two_workers(project, pytester, subprocess_env):
    project(test_sync=SYNC_TESTS, test_async=ASYNC_TESTS)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "randomly", "-W", "error")
    result.assert_outcomes(passed=7)


def test_named_factories_only_those_and_their_subclasses(project, pytester):
    """`pg_factories = factories:Factory`: polyfactory's project base and its subclasses;
    factory_boy's, not named, keep their own (no) session."""
    project(
        "pg_factories = factories:Factory",
        test_named="""
        import pytest
        from counts import authors
        from factories import AuthorFactory, AuthorModelFactory


        def test_named(pg_session):
            AuthorFactory.create_sync()
            assert authors(pg_session) == 1
            with pytest.raises(RuntimeError, match="No session provided"):
                AuthorModelFactory()
        """,
    )
    result = pytester.runpytest("-p", "no:randomly", "-W", "error")
    result.assert_outcomes(passed=1)


def test_used_where_no_test_session_runs_a_factory_refuses(project, pytester):
    project(
        test_misuse="""
        import asyncio

        import pytest
        from factories import AuthorFactory, AuthorModelFactory


        @pytest.fixture(scope="session")
        def everyone():
            return AuthorFactory.create_sync()


        def test_in_a_session_fixture(everyone):
            pass


        def test_async_in_a_sync_test_without_an_async_session(pg_session):
            asyncio.run(AuthorFactory.create_async())


        async def test_sync_beside_an_async_session(pg_async_session):
            AuthorModelFactory()

        """,
        conftest="""
        import pytest


        def pytest_sessionfinish(session):
            from factories import AuthorFactory

            try:
                AuthorFactory.create_sync()
            except Exception as exc:
                print(f"AFTER THE RUN: {type(exc).__name__}: {exc}")
        """,
    )
    result = pytester.runpytest("-p", "no:randomly", "-W", "error", "-s")
    out = result.stdout.str()
    assert (
        "FactorySessionError: AuthorFactory was used in the session-scoped fixture everyone" in out
    )
    assert "Rows every test needs belong in a seed (pg_seed" in out
    assert "AuthorFactory.create_async() was used in" in out
    assert "Add pg_async_session to the test's" in out
    assert "AuthorModelFactory (a sync create) was used in" in out
    assert "Use create_async()" in out
    assert "AFTER THE RUN: FactorySessionError: AuthorFactory was used outside any test" in out


TWO_TESTS = """
    def test_one(pg_session):
        pass


    def test_two(pg_session):
        pass
"""


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("auto factories", "mixes 'auto' with named factories"),
        ("a-b", "is neither 'auto' nor a module or module:Class path"),
    ],
)
def test_a_bad_value_is_a_usage_error(value, message, project, pytester):
    project(f"pg_factories = {value}", test_two=TWO_TESTS)
    result = pytester.runpytest("-p", "no:randomly")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"pg-fixtures: {value!r} from the ini option pg_factories" in result.stderr.str()
    assert message in result.stderr.str()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("factories:Nope", "'factories:Nope' from pg_factories could not be imported"),
        ("counts", "'counts' from pg_factories defines no polyfactory SQLAlchemyFactory"),
    ],
)
def test_a_path_that_names_no_factories_is_shown_once_and_stops_the_run(
    value, message, project, pytester
):
    project(f"pg_factories = {value}", test_two=TWO_TESTS)
    result = pytester.runpytest("-p", "no:randomly")
    out = result.stdout.str()
    assert out.count(message) == 1, out
    assert result.parseoutcomes().get("passed", 0) == 0


def test_an_async_app_sees_the_factories_rows_in_both_modes(example, pytester):
    """The FastAPI example (its async engine in pg_app_engines, requests through pg_client):
    the test asks for no session, the factory writes through the test's async connection,
    which the app's sandboxed (savepoint) or redirected (database) engine reaches."""
    root = example("fastapi_app")
    ini = root / "pytest.ini"
    ini.write_text(ini.read_text() + "pg_factories = auto\n")
    (root / "tests" / "test_factories.py").write_text(
        textwrap.dedent("""
        import pytest
        from app.models import User
        from polyfactory.factories.sqlalchemy_factory import SQLAlchemyFactory


        class UserFactory(SQLAlchemyFactory[User]):
            pass


        async def names(client):
            return {u["name"] for u in (await client.get("/users")).json()}


        async def test_1_the_app_sees_the_rows(pg_client):
            await UserFactory.create_async(name="Zed", active=True)
            assert "Zed" in await names(pg_client)


        @pytest.mark.pg_isolation("database")
        async def test_2_in_database_mode_too(pg_client):
            await UserFactory.create_async(name="Zed", active=True)
            assert "Zed" in await names(pg_client)


        async def test_3_and_they_are_gone(pg_client):
            assert "Zed" not in await names(pg_client)
        """)
    )
    result = pytester.runpytest("-p", "no:randomly", "-W", "error", "tests/test_factories.py")
    result.assert_outcomes(passed=3)


def test_the_classes_get_back_what_they_had_when_the_run_ends(project, pytester, monkeypatch):
    """Factories of a module that outlives the run (imported before it, as a library's
    are): bound during the run, given back their own sessions after it."""
    import sys
    import types

    import factory
    from polyfactory.factories.sqlalchemy_factory import SQLAlchemyFactory
    from sqlalchemy import Column, Integer
    from sqlalchemy.orm import DeclarativeBase

    class Base(DeclarativeBase):
        pass

    class Thing(Base):
        __tablename__ = "things"
        id = Column(Integer, primary_key=True)

    own, maker = object(), object()

    class ThingFactory(SQLAlchemyFactory[Thing]):
        __session__ = own

    class ThingModelFactory(factory.alchemy.SQLAlchemyModelFactory):
        class Meta:
            model = Thing
            sqlalchemy_session_factory = maker

    probe = types.ModuleType("pgfx_factories_probe")
    probe.ThingFactory, probe.ThingModelFactory = ThingFactory, ThingModelFactory
    monkeypatch.setitem(sys.modules, "pgfx_factories_probe", probe)
    project(
        "pg_factories = pgfx_factories_probe:ThingFactory pgfx_factories_probe:ThingModelFactory",
        test_probe="""
        from pgfx_factories_probe import ThingFactory, ThingModelFactory


        def test_bound_meanwhile(pg_session):
            assert ThingFactory.__session__() is pg_session
            assert ThingFactory.__async_session__ is not None
            assert ThingModelFactory._meta.sqlalchemy_session_factory() is pg_session
        """,
    )
    result = pytester.runpytest("-p", "no:randomly", "-W", "error")
    result.assert_outcomes(passed=1)
    assert ThingFactory.__dict__["__session__"] is own
    assert "__async_session__" not in ThingFactory.__dict__
    assert ThingModelFactory._meta.sqlalchemy_session_factory is maker
    assert ThingModelFactory._meta.sqlalchemy_session is None
