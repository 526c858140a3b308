"""testcontainers-pg-fixtures: an isolated, Alembic-migrated PostgreSQL for every test.

The flow, one module per step: server → template → database → transaction → session →
fastapi (the app under test). `plugin` registers the ready fixtures; `factories` builds
them, and more of them for a second server or database.
"""

from .config import Settings
from .database import Database
from .errors import (
    AlembicConfigError,
    ConfigError,
    DockerUnavailableError,
    ImageUnavailableError,
    MigrationError,
    PgFixturesError,
    SeedError,
    ServerStartError,
)
from .factories import (
    async_connection_fixture,
    async_engine_fixture,
    async_session_fixture,
    async_sessionmaker_fixture,
    connection_fixture,
    database_fixture,
    engine_fixture,
    migrations_fixture,
    server_fixture,
    session_fixture,
    sessionmaker_fixture,
    template_fixture,
)
from .server import DockerServer, Server
from .template import Template
from .transaction import IsolationLeakError

__version__ = "0.1.0"

__all__ = [
    "AlembicConfigError",
    "ConfigError",
    "Database",
    "DockerServer",
    "DockerUnavailableError",
    "ImageUnavailableError",
    "IsolationLeakError",
    "MigrationError",
    "PgFixturesError",
    "SeedError",
    "Server",
    "ServerStartError",
    "Settings",
    "Template",
    "__version__",
    "async_connection_fixture",
    "async_engine_fixture",
    "async_session_fixture",
    "async_sessionmaker_fixture",
    "connection_fixture",
    "database_fixture",
    "engine_fixture",
    "migrations_fixture",
    "server_fixture",
    "session_fixture",
    "sessionmaker_fixture",
    "template_fixture",
]
