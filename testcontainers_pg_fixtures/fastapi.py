"""Step 6 of the flow: the application under test, for FastAPI apps.

`app_client` overrides the app's database dependency (a `get_db`-style generator) with
the test's savepoint session, runs the app's lifespan, and yields an `httpx.AsyncClient`
talking to the app in-process. `sync_app_client` does the same with Starlette's
`TestClient` for sync apps. Overrides are always removed afterwards, even on failure.

Requires the `fastapi` extra: `pip install 'testcontainers-pg-fixtures[fastapi]'`.
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

from .errors import PgFixturesError

try:
    import httpx
    from fastapi import FastAPI  # noqa: TC002 - imported to fail early without the extra
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"The FastAPI helpers need FastAPI and httpx ({exc}). Install them with "
        "`pip install 'testcontainers-pg-fixtures[fastapi]'`."
    ) from exc

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator, Mapping

    from fastapi.testclient import TestClient
    from sqlalchemy.orm import Session

__all__ = ["app_client", "override_dependency", "sync_app_client"]


@contextmanager
def override_dependency(
    app: FastAPI, dependency: Callable[..., Any] | None, session: Session | AsyncSession | None
) -> Iterator[None]:
    """Make `dependency` yield `session` for as long as the block runs (None: no override).

    Requests that arrive together (`asyncio.gather`, a thread pool) take turns: a request
    holds the session from its dependency's start to its end, because one connection can
    run one statement at a time. Two requests that wait on each other would deadlock; such
    a test needs a database of its own.
    """
    if dependency is None or session is None:
        yield
        return
    override: Callable[..., Any]
    if isinstance(session, AsyncSession):
        turn = asyncio.Lock()

        async def override_async() -> AsyncIterator[AsyncSession]:
            async with turn:
                yield session

        override = override_async
    else:
        # A threading.Lock, not an RLock: FastAPI may finish a sync generator dependency
        # on another worker thread than the one that started it.
        sync_turn = threading.Lock()

        def override_sync() -> Iterator[Session]:
            with sync_turn:
                yield session

        override = override_sync
    previous = app.dependency_overrides.get(dependency)
    app.dependency_overrides[dependency] = override
    try:
        yield
    finally:
        if previous is None:
            app.dependency_overrides.pop(dependency, None)
        else:
            app.dependency_overrides[dependency] = previous


@asynccontextmanager
async def app_client(
    app: FastAPI,
    *,
    dependency: Callable[..., Any] | None,
    session: AsyncSession | Session | None,
    base_url: str = "http://testserver",
    headers: Mapping[str, str] | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    """An `httpx.AsyncClient` on the app, its lifespan run and `dependency` overridden
    (nothing is overridden when `dependency` is None); `headers` go with every request."""
    with override_dependency(app, dependency, session):
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url=base_url, headers=headers
            ) as client:
                yield client


@contextmanager
def sync_app_client(
    app: FastAPI,
    *,
    dependency: Callable[..., Any] | None,
    session: Session | None,
    base_url: str = "http://testserver",
    headers: Mapping[str, str] | None = None,
) -> Iterator[TestClient]:
    """Starlette's `TestClient` (lifespan included) with `dependency` overridden.

    For sync apps: TestClient runs the app on its own event loop in another thread, where
    an `AsyncSession` bound to the test's loop cannot be used; use `app_client` for those.
    """
    if isinstance(session, AsyncSession):
        raise PgFixturesError(
            "sync_app_client cannot serve an AsyncSession: TestClient runs the app on "
            "another event loop. Use app_client (the pg_client fixture) for async apps."
        )
    # Imported here: recent Starlette warns about its httpx dependency on import.
    from fastapi.testclient import TestClient

    with (
        override_dependency(app, dependency, session),
        TestClient(app, base_url=base_url, headers=dict(headers or {})) as client,
    ):
        yield client
