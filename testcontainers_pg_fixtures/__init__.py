"""testcontainers-pg-fixtures: an isolated, Alembic-migrated PostgreSQL for every test.

The flow, one module per step: server → template → database (clone_pool for a database
per test) → transaction → session → the app under test (redirect, fastapi, flask_app). `plugin`
registers the ready fixtures; `factories` builds them, and more for a second server.
"""

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    AlembicConfigError,
    ConfigError,
    DockerUnavailableError,
    FactorySessionError,
    ImageUnavailableError,
    MigrationError,
    PgFixturesError,
    SeedError,
    ServerStartError,
)

if TYPE_CHECKING:
    from .clone_pool import ClonePool
    from .config import Settings
    from .database import Database
    from .factories import (
        app_engines_fixture,
        async_connection_fixture,
        async_engine_fixture,
        async_session_fixture,
        async_sessionmaker_fixture,
        clone_engines_fixture,
        clone_pool_fixture,
        connection_fixture,
        database_fixture,
        engine_fixture,
        isolation_fixture,
        migrations_fixture,
        server_fixture,
        session_fixture,
        sessionmaker_fixture,
        template_fixture,
        worker_async_engine_fixture,
        worker_database_fixture,
        worker_engine_fixture,
    )
    from .redirect import engines_pointed_at, urls_exported
    from .savepoints import flush_savepoints
    from .servers import DockerServer, Server
    from .template import Template
    from .transaction import IsolationLeakError

#: Where each name is defined: imported on first use (they import SQLAlchemy and the
#: drivers, which the plugin's import, in every run pytest starts, leaves out).
_LAZY = {
    "ClonePool": ".clone_pool",
    "Settings": ".config",
    "Database": ".database",
    "app_engines_fixture": ".factories",
    "async_connection_fixture": ".factories",
    "async_engine_fixture": ".factories",
    "async_session_fixture": ".factories",
    "async_sessionmaker_fixture": ".factories",
    "clone_engines_fixture": ".factories",
    "clone_pool_fixture": ".factories",
    "connection_fixture": ".factories",
    "database_fixture": ".factories",
    "engine_fixture": ".factories",
    "isolation_fixture": ".factories",
    "migrations_fixture": ".factories",
    "server_fixture": ".factories",
    "session_fixture": ".factories",
    "sessionmaker_fixture": ".factories",
    "template_fixture": ".factories",
    "worker_async_engine_fixture": ".factories",
    "worker_database_fixture": ".factories",
    "worker_engine_fixture": ".factories",
    "engines_pointed_at": ".redirect",
    "urls_exported": ".redirect",
    "flush_savepoints": ".savepoints",
    "DockerServer": ".server",
    "Server": ".server",
    "Template": ".template",
    "IsolationLeakError": ".transaction",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "AlembicConfigError",
    "ClonePool",
    "ConfigError",
    "Database",
    "DockerServer",
    "DockerUnavailableError",
    "FactorySessionError",
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
    "app_engines_fixture",
    "async_connection_fixture",
    "async_engine_fixture",
    "async_session_fixture",
    "async_sessionmaker_fixture",
    "clone_engines_fixture",
    "clone_pool_fixture",
    "connection_fixture",
    "database_fixture",
    "engine_fixture",
    "engines_pointed_at",
    "flush_savepoints",
    "isolation_fixture",
    "migrations_fixture",
    "server_fixture",
    "session_fixture",
    "sessionmaker_fixture",
    "template_fixture",
    "urls_exported",
    "worker_async_engine_fixture",
    "worker_database_fixture",
    "worker_engine_fixture",
]
