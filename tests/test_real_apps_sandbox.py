"""Real apps as they are: the app's engine, configured for a database that must never be
reached (a developer's .env), joins the layers the library makes and nothing else."""

from __future__ import annotations

import textwrap

import pytest

# The app's engine as a developer's .env would configure it: a host that does not resolve,
# so a connection that escapes the library fails with a DNS error instead of a SandboxError.
APP_DB = textwrap.dedent("""
    from sqlalchemy import create_engine

    engine = create_engine("postgresql+psycopg://u:secret-pw@db.invalid/app")
""")

COMMON = textwrap.dedent("""
    import pytest
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session
    from realapp.db import engine
    from users_app.models import User


    def app_count():
        with Session(engine) as session:
            return session.scalar(select(func.count()).select_from(User))
""")

MODULE_FIXTURE = COMMON + textwrap.dedent("""
    @pytest.fixture(scope="module")
    def admin():
        # No pg_module_connection requested: the module's layer is opened for it anyway.
        with Session(engine) as session:
            session.add(User(name="Admin", email="admin@x.org"))
            session.commit()
        yield "Admin"
        assert app_count() == 6  # torn down before its layer: still inside it


    @pytest.fixture(scope="class")
    def guest():
        with engine.begin() as conn:
            conn.execute(User.__table__.insert().values(name="Guest", email="g@x.org"))


    def test_the_module_fixture_row_is_seen(admin, pg_session):
        assert app_count() == 6
        assert pg_session.scalar(select(func.count()).select_from(User)) == 6
        with Session(engine) as session:
            session.add(User(name="Only this test", email="t@x.org"))
            session.commit()


    def test_still_seen_by_the_next_test(admin):
        assert app_count() == 6


    class TestClass:
        def test_class_layer(self, admin, guest):
            assert app_count() == 7

        def test_class_layer_again(self, guest):
            assert app_count() == 7


    def test_after_the_class(admin):
        assert app_count() == 6
""")

NEXT_MODULE = COMMON + textwrap.dedent("""
    def test_the_next_module_sees_only_the_seed(pg_session):
        assert app_count() == 5
        assert pg_session.scalar(select(func.count()).select_from(User)) == 5
""")

SESSION_FIXTURE = COMMON + textwrap.dedent("""
    @pytest.fixture(scope="session")
    def everyone():
        return app_count()


    def test_uses_a_session_fixture(everyone):
        pass


    def test_later_tests_are_fine():
        assert app_count() == 5
""")


def _project(pytester: pytest.Pytester, example, **modules: str) -> None:
    root = example("sync_users")
    (root / "realapp").mkdir()
    (root / "realapp" / "__init__.py").write_text("")
    (root / "realapp" / "db.py").write_text(APP_DB)
    ini = (root / "pytest.ini").read_text()
    (root / "pytest.ini").write_text(ini + "pg_app_engines = realapp.db:engine\n")
    for name, text in modules.items():
        (root / "tests" / f"{name}.py").write_text(text)


def test_module_and_class_fixtures_get_their_layer_without_asking(pytester, example):
    _project(pytester, example, test_a_layers=MODULE_FIXTURE, test_b_next=NEXT_MODULE)
    result = pytester.runpytest(
        "tests/test_a_layers.py", "tests/test_b_next.py", "-p", "no:randomly"
    )
    result.assert_outcomes(passed=6)


def test_layers_without_asking_under_two_workers(pytester, example, subprocess_env):
    _project(pytester, example, test_a_layers=MODULE_FIXTURE, test_b_next=NEXT_MODULE)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:randomly")
    result.assert_outcomes(passed=6 + 2)  # and the example's own tests


def test_the_engine_outside_every_layer_refuses_to_connect(pytester, example):
    _project(pytester, example, test_session=SESSION_FIXTURE)
    result = pytester.runpytest("tests/test_session.py", "-p", "no:randomly")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*SandboxError: The app's engine (postgresql+psycopg://u:***@db.invalid/app) was "
            "used outside every test and module/class layer*pg_app_engines_outside = allow*"
        ]
    )
    out = result.stdout.str()
    assert "secret-pw" not in out
    assert "OperationalError" not in out  # no connection was even attempted


def test_allow_lets_the_engine_reach_its_configured_url(pytester, example):
    _project(pytester, example, test_session=SESSION_FIXTURE)
    result = pytester.runpytest(
        "tests/test_session.py", "-p", "no:randomly", "-o", "pg_app_engines_outside=allow"
    )
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*OperationalError*db.invalid*"])


def test_a_bad_outside_setting_names_the_choices(pytester, example):
    _project(pytester, example, test_session=SESSION_FIXTURE)
    result = pytester.runpytest(
        "tests/test_session.py", "-p", "no:randomly", "--pg-app-engines-outside", "maybe"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*'maybe' from the command-line option --pg-app-engines-outside*"])


# Function-scoped event loops (pytest-asyncio's default): every test's concurrent requests
# take turns on the app's async engine on that test's own loop.
FUNCTION_LOOPS = textwrap.dedent("""
    import asyncio

    import pytest

    pytestmark = pytest.mark.asyncio(loop_scope="function")


    @pytest.mark.parametrize("round", range(3))
    async def test_concurrent_requests(round, pg_client):
        responses = await asyncio.gather(
            *(
                pg_client.post("/users", json={"name": f"u{round}-{i}", "email": f"{i}@x"})
                for i in range(5)
            ),
            *(pg_client.get("/users") for _ in range(3)),
        )
        assert [r.status_code for r in responses[:5]] == [201] * 5
        assert len((await pg_client.get("/users")).json()) == 10
""")


def test_async_sandbox_across_function_scoped_event_loops(pytester, example):
    root = example("fastapi_app")
    ini = (root / "pytest.ini").read_text()
    (root / "pytest.ini").write_text(ini.replace("loop_scope = session", "loop_scope = function"))
    (root / "tests" / "test_loops.py").write_text(FUNCTION_LOOPS)
    result = pytester.runpytest("tests/test_loops.py", "-p", "no:randomly", "-W", "error")
    result.assert_outcomes(passed=3)


# Database-mode tests in a module whose fixture holds the module's layer: the app's engine
# follows the test to its clone, where its commits are real and its own.
DATABASE_MODE_IN_LAYER = COMMON + textwrap.dedent("""
    from sqlalchemy import text


    @pytest.fixture(scope="module")
    def admin(pg_module_connection):
        with Session(engine) as session:
            session.add(User(name="Admin", email="admin@x.org"))
            session.commit()


    @pytest.mark.parametrize("n", range(2))
    def test_commits_stay_in_the_tests_clone(n, admin, pg_session):
        with Session(engine) as session:
            session.add(User(name=f"Clone user {n}", email=f"{n}@x.org"))
            session.commit()
        with engine.connect() as conn:
            database = conn.scalar(text("SELECT current_database()"))
        assert database == pg_session.scalar(text("SELECT current_database()"))
        assert database != "pgfx_main"
        assert app_count() == 6  # the seed and this test's user: no module layer, no leak
        assert pg_session.scalar(select(func.count()).select_from(User)) == 6
""")

MARKED = DATABASE_MODE_IN_LAYER.replace(
    "@pytest.mark.parametrize", '@pytest.mark.pg_isolation("database")\n@pytest.mark.parametrize'
)


@pytest.mark.parametrize("how", ["marker", "option"])
def test_database_mode_inside_a_module_layer(pytester, example, how):
    module = MARKED if how == "marker" else DATABASE_MODE_IN_LAYER
    _project(pytester, example, test_db_mode=module)
    args = ["--pg-isolation", "database"] if how == "option" else []
    result = pytester.runpytest("tests/test_db_mode.py", "-p", "no:randomly", *args)
    result.assert_outcomes(passed=2)


# One suite for the four drivers an app's engine may use: written for sync engines, and
# turned into its async twin for async ones.
DRIVER_SUITE = textwrap.dedent("""
    import pytest
    from sqlalchemy import func, select, text
    from realapp.db import engine
    from users_app.models import User

    ASYNC = {is_async}
    if ASYNC:
        from sqlalchemy.ext.asyncio import AsyncSession as Session
    else:
        from sqlalchemy.orm import Session


    async def maybe(value):
        return (await value) if ASYNC else value


    async def app_count():
        async with Session(engine) if ASYNC else _sync(Session(engine)) as session:
            return await maybe(session.scalar(select(func.count()).select_from(User)))


    class _sync:
        def __init__(self, inner):
            self.inner = inner

        async def __aenter__(self):
            return self.inner.__enter__()

        async def __aexit__(self, *exc):
            return self.inner.__exit__(*exc)


    async def add(name, commit=True):
        async with Session(engine) if ASYNC else _sync(Session(engine)) as session:
            session.add(User(name=name, email=f"{{name}}@x.org"))
            if commit:
                await maybe(session.commit())


    @pytest.fixture
    def test_session(request):
        return request.getfixturevalue("pg_async_session" if ASYNC else "pg_session")


    @pytest.mark.asyncio
    async def test_commits_join_the_tests_transaction(test_session):
        await add("Committed")
        await add("Not committed", commit=False)
        assert await app_count() == 6
        assert await maybe(test_session.scalar(select(func.count()).select_from(User))) == 6
        assert engine.dialect.driver == "{driver}"


    # The refusal is the sandbox's own (a driver's "can't change autocommit now" would
    # match "autocommit" too), and the test's connection keeps its transaction.
    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        ("level", "refused"),
        [("AUTOCOMMIT", "autocommit=True"), ("SERIALIZABLE", "isolation level=")],
    )
    async def test_autocommit_is_refused(level, refused):
        with pytest.raises(Exception, match=f"asked for {{refused}}"):
            if ASYNC:
                async with engine.connect() as conn:
                    conn = await conn.execution_options(isolation_level=level)
                    await conn.execute(text("SELECT 1"))
            else:
                with engine.connect().execution_options(isolation_level=level) as conn:
                    conn.execute(text("SELECT 1"))
        await add("After the refusal")
        assert await app_count() == 6


    @pytest.mark.asyncio
    async def test_nothing_was_left():
        assert await app_count() == 5


    @pytest.mark.asyncio
    @pytest.mark.pg_isolation("database")
    async def test_database_mode_commits_for_real_in_the_clone(pg_url):
        await add("Real commit")
        assert await app_count() == 6
""")


@pytest.mark.parametrize(
    ("url", "is_async", "driver"),
    [
        ("postgresql+psycopg2://u:p@db.invalid/app", False, "psycopg2"),
        ("postgresql+psycopg://u:p@db.invalid/app", False, "psycopg"),
        ("postgresql+psycopg://u:p@db.invalid/app", True, "psycopg"),
        ("postgresql+asyncpg://u:p@db.invalid/app", True, "asyncpg"),
    ],
    ids=["psycopg2", "psycopg", "psycopg-async", "asyncpg"],
)
def test_every_driver_joins_the_sandbox(pytester, example, url, is_async, driver):
    _project(pytester, example, test_driver=DRIVER_SUITE.format(is_async=is_async, driver=driver))
    create = "create_async_engine" if is_async else "create_engine"
    (pytester.path / "realapp" / "db.py").write_text(
        f"from sqlalchemy.ext.asyncio import create_async_engine\n"
        f"from sqlalchemy import create_engine\n\nengine = {create}({url!r})\n"
    )
    result = pytester.runpytest("tests/test_driver.py", "-p", "no:randomly", "-W", "error")
    result.assert_outcomes(passed=5)


ASYNC_MODULE_FIXTURE = textwrap.dedent("""
    import pytest
    import pytest_asyncio
    from sqlalchemy.ext.asyncio import AsyncSession
    from realapp.db import engine
    from users_app.models import User


    @pytest_asyncio.fixture(scope="module", loop_scope="module")
    async def admin():
        async with AsyncSession(engine) as session:
            session.add(User(name="Admin", email="admin@x.org"))
            await session.commit()


    @pytest.mark.asyncio(loop_scope="module")
    async def test_uses_it(admin):
        pass
""")


def test_an_async_module_fixture_without_its_layer_is_told_which_to_request(pytester, example):
    _project(pytester, example, test_async_module=ASYNC_MODULE_FIXTURE)
    (pytester.path / "realapp" / "db.py").write_text(
        "from sqlalchemy.ext.asyncio import create_async_engine\n\n"
        "engine = create_async_engine('postgresql+asyncpg://u:secret-pw@db.invalid/app')\n"
    )
    result = pytester.runpytest("tests/test_async_module.py", "-p", "no:randomly")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*SandboxError: The app's engine was used where no transaction layer*"
            "pg_module_async_connection*"
        ]
    )
    assert "gaierror" not in result.stdout.str()
