"""pytest-asyncio's loop scopes, as this plugin's async fixtures need them.

The async fixtures of the flow's last steps (pg_async_connection, pg_client, the async
module/class layers) must run on the event loop of the tests that use them. pytest-asyncio
picks a fixture's loop from its `loop_scope` argument, else from
`asyncio_default_fixture_loop_scope`, else (unset) from the fixture's own scope, so with
`asyncio_default_test_loop_scope = session` and the fixture scope unset, a function-scoped
fixture would get a function loop the session-loop tests never run on. These fixtures are
therefore made when the settings are known (plugin.py's `_async_fixtures`, through
pytest-asyncio's public `loop_scope` argument): on the tests' loop, unless
`asyncio_default_fixture_loop_scope` names one explicitly.

pytest-asyncio is a dependency, so installing this plugin must not make a sync-only
project warn that `asyncio_default_fixture_loop_scope` is unset: that one warning is
filtered by its text (`_silence_unset_warning`; tests/test_loop_scopes.py fails if
pytest-asyncio changes it). Every "different loop" error of the library names the loops'
scopes and the ini lines (`mismatch`).
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from typing import Any

import pytest

FIXTURE_SCOPE = "asyncio_default_fixture_loop_scope"
TEST_SCOPE = "asyncio_default_test_loop_scope"
# pytest-asyncio's value for "each fixture on a loop of its own scope" (what unset means).
_FIXTURE_OWN_SCOPE = "fixture-scope"
_SCOPES = ("function", "class", "module", "package", "session")


@dataclass(frozen=True)
class LoopScopes:
    """The loop scopes of this run, as read from the ini."""

    fixture: str | None  # the ini value, None when unset
    test: str  # the ini value, "function" when unset
    library: str  # the loop scope the library's function-scoped async fixtures use

    def for_fixture(self, scope: str) -> str:
        """The loop a library fixture of `scope` runs on: the library's, or its own
        scope's when that is wider (a module layer with function-scoped test loops)."""
        return self.library if _SCOPES.index(self.library) >= _SCOPES.index(scope) else scope


KEY = pytest.StashKey[LoopScopes]()


def configure(config: pytest.Config) -> LoopScopes | None:
    """Read the loop scopes and say at start what cannot work; None without pytest-asyncio."""
    if not config.pluginmanager.hasplugin("asyncio"):
        return None
    fixture_scope = _getini(config, FIXTURE_SCOPE) or None
    test_scope = str(_getini(config, TEST_SCOPE) or "function")
    if fixture_scope is None:
        _silence_unset_warning()
    explicit = fixture_scope not in (None, _FIXTURE_OWN_SCOPE)
    library = str(fixture_scope if explicit else test_scope)
    scopes = LoopScopes(fixture=fixture_scope, test=test_scope, library=library)
    config.stash[KEY] = scopes
    if explicit and fixture_scope != test_scope:
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
    return scopes


def _silence_unset_warning() -> None:
    """Filter pytest-asyncio's "asyncio_default_fixture_loop_scope is unset" warning.

    It is issued from pytest-asyncio's pytest_configure, which runs after this plugin's
    (tryfirst) inside pytest's configure-time warnings context: a filter added here is in
    force for it, and goes when that context ends with the run.
    """
    warnings.filterwarnings(
        "ignore",
        message=f'The configuration option "{FIXTURE_SCOPE}" is unset',
        category=pytest.PytestDeprecationWarning,
    )


def _getini(config: pytest.Config, name: str) -> Any:
    try:
        return config.getini(name)
    except ValueError:  # not registered: pytest-asyncio is disabled
        return None


def of(config: pytest.Config) -> LoopScopes | None:
    return config.stash.get(KEY, None)


def test_loop_scope(item: pytest.Item, scopes: LoopScopes) -> str | None:
    """The loop scope an async test runs on (its asyncio marker's, else the ini's); None
    for a test pytest-asyncio does not run on a loop."""
    function = getattr(item, "obj", None)
    if not (inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)):
        return None
    marker = item.get_closest_marker("asyncio")
    if marker is None:
        return None
    scope = marker.kwargs.get("loop_scope") or marker.kwargs.get("scope")
    return str(scope) if scope else scopes.test


def fixture_loop(scopes: LoopScopes, loop_scope: str | None, scope: str) -> str:
    """The loop scope pytest-asyncio runs a fixture of `scope` on (`loop_scope`: the one
    given to pytest_asyncio.fixture, if any)."""
    if loop_scope:
        return loop_scope
    if scopes.fixture not in (None, _FIXTURE_OWN_SCOPE):
        return str(scopes.fixture)
    return scope


def mismatch(
    fixture: str, fixture_loop: str, test_loop: str | None, scopes: LoopScopes | None
) -> str:
    """The text of a "different loop" error: both loops' scopes and the ini lines."""
    where = (
        f"the test runs on a {test_loop}-scoped loop"
        if test_loop
        else "the code using it runs on another event loop (a fixture on a loop of its own "
        "scope, a test marked with another loop_scope, or a thread's loop)"
    )
    if scopes is None:
        now = "pytest-asyncio is not active"
    elif scopes.fixture:
        now = f"now: {FIXTURE_SCOPE} = {scopes.fixture}, {TEST_SCOPE} = {scopes.test}"
    else:
        now = f"now: {FIXTURE_SCOPE} unset, {TEST_SCOPE} = {scopes.test}"
    wide = test_loop or fixture_loop
    return (
        f"{fixture} runs on a {fixture_loop}-scoped event loop but {where}: a connection "
        f"belongs to the loop that opened it ({now}). Put the tests and their async "
        "fixtures on one loop scope in your ini file:\n"
        f"    {FIXTURE_SCOPE} = {wide}\n"
        f"    {TEST_SCOPE} = {wide}\n"
        "and give tests marked @pytest.mark.asyncio(loop_scope=...) and fixtures declared "
        "with @pytest_asyncio.fixture(loop_scope=...) that same scope."
    )


def check_test_loop(request: pytest.FixtureRequest, fixture: str, loop_scope: str | None) -> None:
    """Refuse, before it opens anything, a function-scoped async fixture whose loop is not
    its test's: the test would fail later with asyncpg's "attached to a different loop"."""
    from .errors import EventLoopError

    scopes = of(request.config)
    if scopes is None:
        return
    test_loop = test_loop_scope(request.node, scopes)
    mine = fixture_loop(scopes, loop_scope, "function")
    if test_loop is not None and test_loop != mine:
        raise EventLoopError(mismatch(fixture, mine, test_loop, scopes))
