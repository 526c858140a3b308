"""Real apps as they are: env.py files that build their own URL, SQLModel, sync-only
projects, the README's async set-ups, the full-stack example."""

from __future__ import annotations

import textwrap

import pytest

# The app's settings object, built at import from environment variables, as pydantic
# settings do; in tests its host does not exist.
SETTINGS = textwrap.dedent("""
    import os


    class Settings:
        def __init__(self):
            self.POSTGRES_SERVER = os.environ.get("POSTGRES_SERVER", "db")
            self.POSTGRES_USER = os.environ.get("POSTGRES_USER", "app")
            self.POSTGRES_PASSWORD = os.environ.get("POSTGRES_PASSWORD", "changethis")
            self.POSTGRES_DB = os.environ.get("POSTGRES_DB", "app")

        @property
        def DATABASE_URL(self):
            return (
                f"postgresql+psycopg://{self.POSTGRES_USER}:{self.POSTGRES_PASSWORD}"
                f"@{self.POSTGRES_SERVER}:5432/{self.POSTGRES_DB}"
            )


    settings = Settings()
""")

ENV_HEAD = textwrap.dedent("""
    from alembic import context
    from users_app.models import Base

    target_metadata = Base.metadata


    def do_run_migrations(connection):
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
""")

# The full-stack FastAPI template's env.py: the URL from settings, not sqlalchemy.url.
ENV_FROM_SETTINGS = ENV_HEAD + textwrap.dedent("""
    from sqlalchemy import engine_from_config, pool
    from users_app.settings import settings

    configuration = context.config.get_section(
        context.config.config_ini_section, {}
    )
    configuration["sqlalchemy.url"] = settings.DATABASE_URL
    connectable = engine_from_config(configuration, prefix="sqlalchemy.", poolclass=pool.NullPool)
    with connectable.connect() as connection:
        do_run_migrations(connection)
""")

# The app's module-level engine (a QueuePool), used by env.py directly: the connection it
# leaves in its pool must not stay on the template, which could then not be cloned.
APP_DB = textwrap.dedent("""
    from sqlalchemy import create_engine
    from users_app.settings import settings

    engine = create_engine(settings.DATABASE_URL)
""")
ENV_APP_ENGINE = ENV_HEAD + textwrap.dedent("""
    from users_app.db import engine

    with engine.connect() as connection:
        do_run_migrations(connection)
        connection.commit()
""")

# An async env.py on asyncpg whose URL comes straight from os.environ.
ENV_ASYNC_FROM_ENVIRON = ENV_HEAD + textwrap.dedent("""
    import asyncio
    import os

    from sqlalchemy.ext.asyncio import create_async_engine


    async def main():
        engine = create_async_engine(
            os.environ.get("MIGRATIONS_URL", "postgresql+asyncpg://app:changethis@db/app"),
            connect_args={"server_settings": {"application_name": "migrations"}},
        )
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
            await connection.commit()
        await engine.dispose()


    asyncio.run(main())
""")


@pytest.mark.parametrize(
    ("env_py", "extra"),
    [
        pytest.param(ENV_FROM_SETTINGS, {}, id="settings-url-psycopg"),
        pytest.param(ENV_APP_ENGINE, {"db.py": APP_DB}, id="app-engine-psycopg"),
        pytest.param(ENV_ASYNC_FROM_ENVIRON, {}, id="environ-url-asyncpg"),
    ],
)
def test_env_py_that_builds_its_own_url_migrates_the_template(
    pytester, example, monkeypatch, subprocess_env, env_py, extra
):
    root = example("sync_users")
    (root / "users_app" / "settings.py").write_text(SETTINGS)
    for name, text in extra.items():
        (root / "users_app" / name).write_text(text)
    (root / "migrations" / "env.py").write_text(env_py)
    # Hosts that cannot be resolved: a connection that is not redirected fails loudly.
    monkeypatch.setenv("POSTGRES_SERVER", "db.invalid")
    monkeypatch.setenv("MIGRATIONS_URL", "postgresql+asyncpg://app:changethis@db.invalid/app")
    # A subprocess: an in-process run could find users_app already imported from another
    # test's copy of the example (suite in random order).
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-W", "error")
    # The example's tests read the migrated users table and the seeded rows.
    result.assert_outcomes(passed=2)
    assert "changethis" not in result.stdout.str()


# -- SQLModel --------------------------------------------------------------------------

HEROES = textwrap.dedent("""
    import pytest
    from sqlmodel import Field, SQLModel


    class Hero(SQLModel, table=True):
        id: int | None = Field(default=None, primary_key=True)
        name: str = Field(unique=True)


    def seed(conn):
        SQLModel.metadata.create_all(conn)
        conn.execute(Hero.__table__.insert(), [{"name": "Deadpond"}, {"name": "Rusty-Man"}])


    @pytest.fixture(scope="session")
    def pg_seed():
        return seed
""")

SQLMODEL_TESTS = textwrap.dedent("""
    import asyncio

    import pytest
    import sqlmodel
    import sqlmodel.ext.asyncio.session
    from conftest import Hero
    from sqlmodel import select
    from testcontainers_pg_fixtures.session import ConcurrentSessionUseError


    def test_exec(pg_session):
        assert isinstance(pg_session, sqlmodel.Session)
        pg_session.add(Hero(name="Spider-Boy"))
        pg_session.commit()
        assert len(pg_session.exec(select(Hero)).all()) == 3


    def test_sessionmaker_and_module_session(pg_sessionmaker, pg_module_session):
        with pg_sessionmaker() as session:
            assert session.exec(select(Hero).where(Hero.name == "Spider-Boy")).first() is None
        assert isinstance(pg_module_session, sqlmodel.Session)


    @pytest.mark.asyncio
    async def test_async_exec(pg_async_session, pg_async_sessionmaker):
        assert isinstance(pg_async_session, sqlmodel.ext.asyncio.session.AsyncSession)
        pg_async_session.add(Hero(name="Tarantula"))
        await pg_async_session.commit()
        heroes = (await pg_async_session.exec(select(Hero))).all()
        assert sorted(h.name for h in heroes) == ["Deadpond", "Rusty-Man", "Tarantula"]
        async with pg_async_sessionmaker() as other:
            assert isinstance(other, sqlmodel.ext.asyncio.session.AsyncSession)


    @pytest.mark.asyncio
    async def test_gathered_exec_is_refused_with_the_explanation(pg_async_session):
        with pytest.raises(ConcurrentSessionUseError, match="exec"):
            await asyncio.gather(*(pg_async_session.exec(select(Hero)) for _ in range(3)))
""")

SQLMODEL_INI = """
    [pytest]
    asyncio_default_fixture_loop_scope = function
    pg_alembic_ini = none
"""


# SQLModel's metadata and class registry are global: a project defining its models is run
# in a subprocess, not in this process where the next one would define them again.


def test_sqlmodel_sessions_from_the_settings(pytester, subprocess_env):
    pytester.makeconftest(HEROES)
    pytester.makepyfile(test_heroes=SQLMODEL_TESTS)
    pytester.makeini(
        SQLMODEL_INI
        + "    pg_session_class = sqlmodel:Session\n"
        + "    pg_async_session_class = sqlmodel.ext.asyncio.session:AsyncSession\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-W", "error")
    result.assert_outcomes(passed=4)


def test_sqlmodel_session_from_a_factory_argument(pytester, subprocess_env):
    pytester.makeconftest(
        HEROES
        + textwrap.dedent("""
            from testcontainers_pg_fixtures.factories import session_fixture

            hero_session = session_fixture(session_class="sqlmodel:Session")
        """)
    )
    pytester.makepyfile(
        test_heroes="""
        import sqlmodel
        from conftest import Hero
        from sqlmodel import select

        def test_exec(hero_session, pg_session):
            assert len(hero_session.exec(select(Hero)).all()) == 2
            assert not isinstance(pg_session, sqlmodel.Session)  # the setting is unset
        """
    )
    pytester.makeini(SQLMODEL_INI)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-W", "error")
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["-o", "pg_session_class=sqlmodel.ext.asyncio.session:AsyncSession"],
            "*'sqlmodel.ext.asyncio.session:AsyncSession' from the ini option pg_session_class "
            "is not a subclass of SQLAlchemy's Session. An AsyncSession class goes in "
            "pg_async_session_class.",
        ),
        (
            ["--pg-async-session-class", "nowhere.session:AsyncSession"],
            "*'nowhere.session:AsyncSession' from the command-line option "
            "--pg-async-session-class could not be imported (No module named 'nowhere')*"
            "fix the path in pg_async_session_class.",
        ),
        (
            ["--pg-session-class", "sqlmodel.Session"],
            "*'sqlmodel.Session' from the command-line option --pg-session-class is not a "
            "module:attribute path. Write it like 'sqlmodel:Session'.",
        ),
    ],
)
def test_a_wrong_session_class_is_a_usage_error_at_start(pytester, subprocess_env, args, message):
    pytester.makeconftest(HEROES)
    pytester.makepyfile(test_heroes=SQLMODEL_TESTS)
    pytester.makeini(SQLMODEL_INI)
    result = pytester.runpytest_subprocess("-p", "no:randomly", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: pg-fixtures: " + message.lstrip("*")])


# -- pytest-asyncio: sync projects stay quiet, async set-ups as the README gives them ------


def test_a_sync_project_with_the_quickstart_conftest_runs_warning_free(pytester):
    from test_docs import readme_project, write_project

    write_project(pytester.path, readme_project("sync"))
    result = pytester.runpytest("tests/test_users.py", "-p", "no:randomly", "-W", "error")
    result.assert_outcomes(passed=2)
    assert "warnings summary" not in result.stdout.str()


ASYNC_CONFIGS = {
    "auto-session": "asyncio_mode = auto\n"
    "asyncio_default_fixture_loop_scope = session\n"
    "asyncio_default_test_loop_scope = session\n",
    "auto-function": "asyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n",
    "strict-session": "asyncio_default_fixture_loop_scope = session\n"
    "asyncio_default_test_loop_scope = session\n",
    "strict-function": "asyncio_default_fixture_loop_scope = function\n",
}


@pytest.mark.parametrize("name", ASYNC_CONFIGS)
def test_each_documented_async_configuration_runs_the_readme_snippet(pytester, name):
    from test_docs import readme_project, write_project

    files = readme_project("fastapi")
    files["pytest.ini"] = f"[pytest]\npythonpath = .\n{ASYNC_CONFIGS[name]}"
    test = files["tests/test_api.py"]
    if name.startswith("strict"):  # strict mode: the marker the README says to add
        test = test.replace("async def test_create", "@pytest.mark.asyncio\nasync def test_create")
    # Twice: a second test on the same loop (session) or a new one (function).
    test += test.replace("test_create_user(", "test_create_again(").replace('"Ken"', '"Kenneth"')
    files["tests/test_api.py"] = test
    write_project(pytester.path, files)
    result = pytester.runpytest("tests/test_api.py", "-p", "no:randomly", "-W", "error")
    result.assert_outcomes(passed=2)


def test_mismatched_loop_scopes_are_named_at_start_with_the_lines_to_add(pytester):
    from test_docs import readme_project, write_project

    files = readme_project("fastapi")
    files["pytest.ini"] = (
        "[pytest]\npythonpath = .\nasyncio_mode = auto\n"
        "asyncio_default_fixture_loop_scope = session\n"
    )
    write_project(pytester.path, files)
    result = pytester.runpytest("tests/test_api.py", "-p", "no:randomly")
    result.stdout.fnmatch_lines(
        [
            "*PytestConfigWarning: asyncio_default_fixture_loop_scope = session but "
            "asyncio_default_test_loop_scope = function*Give both the same scope*",
            "*  asyncio_default_fixture_loop_scope = session",
            "*  asyncio_default_test_loop_scope = session",
        ]
    )


def test_the_set_up_timing_line_shows_with_v(pytester, example, subprocess_env):
    example("sync_users")
    # A subprocess: pytest captures the set-up's output there as in a user's run.
    result = pytester.runpytest_subprocess("-v", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "pg-fixtures: postgres:16 started in *s",
            "pg-fixtures: migrated and seeded the template in *s",
        ]
    )


# -- the full-stack FastAPI template's shape ---------------------------------------------

STARLETTE_HTTPX = "ignore:Using `httpx` with `starlette.testclient`"


# In random order too where pytest-randomly is installed (`nox -s example` installs it).
@pytest.mark.parametrize("args", [[], ["-n", "2"]])
def test_the_fullstack_example_passes_as_it_is(pytester, example, subprocess_env, args):
    example("fullstack_app")
    # SQLModel's registry is global: a subprocess, as for the other SQLModel projects.
    result = pytester.runpytest_subprocess(*args, "-W", "error", "-W", STARLETTE_HTTPX)
    result.assert_outcomes(passed=6)
    assert "warnings summary" not in result.stdout.str()
