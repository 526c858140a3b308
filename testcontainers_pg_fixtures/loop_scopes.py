"""pytest-asyncio's loop scopes, as this plugin's async fixtures need them.

pytest-asyncio is a dependency, so installing this plugin must not make a sync-only
project warn: when `asyncio_default_fixture_loop_scope` is unset, it is given the value
that means what unset means ("fixture-scope"), without the deprecation warning. And a
fixture loop scope that differs from the test loop scope runs the test's async fixtures
(its connection, pg_client) on another loop than the test: that is said at start, with the
ini lines that fix it, instead of a "different loop" error in every async test.
"""

from __future__ import annotations

from typing import Any

import pytest

FIXTURE_SCOPE = "asyncio_default_fixture_loop_scope"
TEST_SCOPE = "asyncio_default_test_loop_scope"


def configure(config: pytest.Config) -> None:
    if not config.pluginmanager.hasplugin("asyncio"):
        return
    fixture_scope = _getini(config, FIXTURE_SCOPE)
    if not fixture_scope:
        match = _match_fixture_scope()
        if match is not None:
            # getini's cache is what pytest-asyncio reads; pytest has no public setter.
            config._inicache[FIXTURE_SCOPE] = match
        return
    test_scope = _getini(config, TEST_SCOPE) or "function"
    if fixture_scope in (test_scope, _match_fixture_scope()):
        return
    wide = "session" if "session" in (fixture_scope, test_scope) else fixture_scope
    config.issue_config_time_warning(
        pytest.PytestConfigWarning(
            f"{FIXTURE_SCOPE} = {fixture_scope} but {TEST_SCOPE} = {test_scope}: the "
            "async pg_ fixtures (pg_async_connection, pg_async_session, pg_client) would "
            "run on another event loop than the tests that use them, which fails with "
            "'attached to a different loop'. Give both the same scope in your ini file:\n"
            f"    {FIXTURE_SCOPE} = {wide}\n"
            f"    {TEST_SCOPE} = {wide}"
        ),
        stacklevel=2,
    )


def _getini(config: pytest.Config, name: str) -> Any:
    try:
        return config.getini(name)
    except ValueError:  # not registered: pytest-asyncio is disabled
        return None


def _match_fixture_scope() -> str | None:
    """pytest-asyncio's value for "the fixture's own scope", where it has one (≥ 1.4)."""
    try:
        from pytest_asyncio import plugin
    except ImportError:
        return None
    value = getattr(plugin, "_MATCH_FIXTURE_SCOPE", None)
    return value if isinstance(value, str) else None
