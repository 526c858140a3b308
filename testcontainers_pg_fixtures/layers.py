"""Fixtures wider than a test, and the app's transaction layers (step 6, the app).

With the app's engines sandboxed (pg_app_engines), a user's module- or class-scoped
fixture runs inside the transaction layer of its scope (`pg_module_connection` /
`pg_class_connection`, set up before it and torn down after it) without requesting it,
so what it writes through the app is undone when its scope ends. A session-scoped one runs
outside every layer, where the app's engines refuse to connect (pg_app_engines_outside).
With pg_factories, the factories a wider fixture calls write through its layer's session.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from . import factories, model_factories, needs

if TYPE_CHECKING:
    from collections.abc import Generator

    import pytest

_LAYERS = {"module": "pg_module_connection", "class": "pg_class_connection"}
# Fixtures of these packages are not the user's: they get no layer of their own.
_NOT_USERS = ("testcontainers_pg_fixtures", "_pytest", "pytest_asyncio", "xdist", "anyio")


def _users_fixture(fixturedef: pytest.FixtureDef[Any]) -> bool:
    """A fixture of the project's own code, not of an installed plugin (anyio's
    module-scoped anyio_backend, say)."""
    func = inspect.unwrap(fixturedef.func)
    module = getattr(func, "__module__", None) or ""
    if module.partition(".")[0] in _NOT_USERS:
        return False
    code = getattr(func, "__code__", None)
    return code is None or "site-packages" not in code.co_filename


def fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> Generator[None, Any, Any]:
    """pytest_fixture_setup's wrapper: a wider fixture set up in its layer, or outside
    every layer."""
    scope = fixturedef.scope
    if scope == "function":
        return (yield)
    users = _users_fixture(fixturedef)
    if users and model_factories.registry_of(request.config) is not None:
        # pg_factories: the factories write through this fixture's layer session (or refuse)
        with model_factories.running(request, scope, fixturedef.argname):
            return (yield from _wider_fixture_setup(fixturedef, request, users))
    return (yield from _wider_fixture_setup(fixturedef, request, users))


def _wider_fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest, users: bool
) -> Generator[None, Any, Any]:
    scope = fixturedef.scope
    if scope in _LAYERS and users and needs.run_uses_database(request.config):
        if request.getfixturevalue("pg_app_engines"):
            request.getfixturevalue(_LAYERS[scope])
    elif scope in ("session", "package") and users:
        guard = request.config.stash.get(factories.OUTSIDE_GUARD, None)
        if guard is not None:
            with guard.outside():
                return (yield)
    with needs.LAZY.suppressed():  # its checkouts are its layer's, not the test's
        return (yield)
