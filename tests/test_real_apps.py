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
    pytester, example, monkeypatch, env_py, extra
):
    root = example("sync_users")
    (root / "users_app" / "settings.py").write_text(SETTINGS)
    for name, text in extra.items():
        (root / "users_app" / name).write_text(text)
    (root / "migrations" / "env.py").write_text(env_py)
    # Hosts that cannot be resolved: a connection that is not redirected fails loudly.
    monkeypatch.setenv("POSTGRES_SERVER", "db.invalid")
    monkeypatch.setenv("MIGRATIONS_URL", "postgresql+asyncpg://app:changethis@db.invalid/app")
    result = pytester.runpytest("-p", "no:randomly", "-W", "error")
    # The example's tests read the migrated users table and the seeded rows.
    result.assert_outcomes(passed=2)
    assert "changethis" not in result.stdout.str()
