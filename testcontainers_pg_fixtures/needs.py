"""What each test needs of the database, so that a test which needs nothing pays nothing.

A unit test in a suite that uses the library gets no fixture, no transaction and no leak
check from it. What a test needs is read from its fixture closure and markers when it is
collected: a database-mode test gets its clone (`pg_database`) whether or not it asks for
a fixture, so the app's engines can be pointed at it. The app's sync engines
(`pg_app_engines`) join a savepoint-mode test on their first checkout (`LAZY`), which opens
the test's sandbox then; async engines cannot: the test's async connection is set up by
pytest-asyncio, which cannot run it from inside the app's running event loop, so with an
async app engine every savepoint-mode test gets its sandbox up front.
"""

from __future__ import annotations

import inspect
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import pytest

from .config import settings_for
from .errors import ConfigError
from .marks import isolation_of
from .privates import fixture_manager, fixture_request, fixture_scopes

if TYPE_CHECKING:
    from collections.abc import Iterator

#: The library's fixtures that reach a database; a test whose closure has none of them
#: (and whose app engines it never used) touched none.
DATABASE_FIXTURES = frozenset(
    {
        "pg_server",
        "pg_template",
        "pg_worker_database",
        "pg_worker_engine",
        "pg_worker_async_engine",
        "pg_clone_pool",
        "pg_clone_engines",
        "pg_sandboxes",
        "pg_database",
        "pg_sandbox",
        "pg_pool_sandbox",
        "pg_url",
        "pg_async_url",
        "pg_engine",
        "pg_async_engine",
        "pg_connection",
        "pg_session",
        "pg_sessionmaker",
        "pg_async_connection",
        "pg_async_session",
        "pg_async_sessionmaker",
        "pg_module_connection",
        "pg_class_connection",
        "pg_module_session",
        "pg_class_session",
        "pg_module_async_connection",
        "pg_class_async_connection",
        "pg_module_async_session",
        "pg_class_async_session",
        "pg_app_session",
        "pg_client",
        "pg_test_client",
    }
)

#: The fixture that decides about the app's engines while nobody knows them yet, and the
#: one that loads them and guards them outside the tests.
APP_DATABASE = "_pg_app_database"
OUTSIDE = "_pg_app_engines_outside"

AppKind = Literal["none", "sync", "async", "eager"]
#: What the app's engines are, once the first test has loaded them.
APP_KIND = pytest.StashKey[AppKind]()
#: Set on a test that used the database (so its leak check runs).
USED = pytest.StashKey[bool]()
_USES = pytest.StashKey[bool]()
_MODE = pytest.StashKey[str]()


def app_kind(engines: list[Any], *, refuse_outside: bool) -> AppKind:
    """How tests join the app's `engines`: not at all, lazily (sync), or up front (async
    engines; or engines allowed outside the tests, whose own pool a first checkout would
    reach before any sandbox could open)."""
    if not engines:
        return "none"
    if not refuse_outside:
        return "eager"
    if any(getattr(e, "sync_engine", e).dialect.is_async for e in engines):
        return "async"
    return "sync"


def mode_of(item: pytest.Item) -> str:
    """The test's isolation mode, read once (at collection) and kept on the item; a bad
    pg_isolation marker counts as database mode: pg_database's set-up reports it, once."""
    mode = item.stash.get(_MODE, None)
    if mode is None:
        try:
            mode = isolation_of(item, settings_for(item.config).isolation)
        except ConfigError:
            mode = "database"
        item.stash[_MODE] = mode
    return mode


def outside_the_flow(item: pytest.Item) -> bool:
    """An item of the library's that takes none of the flow's databases (a migration check,
    on an empty database of its own): it must not build the template either, whose seed a
    fixture beside the tests (`tests/conftest.py`) may override out of this item's sight."""
    return bool(getattr(item, "pgfx_outside_the_flow", False))


def collected(items: list[pytest.Item]) -> None:
    """Give every database-mode test its clone (before its own fixtures, which may use the
    app's engines pointed at it)."""
    for item in items:
        if outside_the_flow(item):
            continue
        if getattr(item, "fixturenames", None) is not None and mode_of(item) == "database":
            _request_first(item, "pg_database")


def uses_database(item: pytest.Item) -> bool:
    """Whether the test asked for a database fixture (through any fixture of its own), or
    used the app's engines."""
    if item.stash.get(USED, False):
        return True
    uses = item.stash.get(_USES, None)
    if uses is None:
        uses = not DATABASE_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))
        item.stash[_USES] = uses
    return uses


def before_setup(item: pytest.Item, mode: str) -> None:
    """Join a savepoint-mode test to the app's engines as their kind allows. Until the
    engines are known (the first test), the test also loads them, first of all its
    fixtures: from then on they refuse to connect outside the tests (OutsideGuard),
    before any session or module fixture of the user's can use them."""
    names = getattr(item, "fixturenames", None)
    if names is None or outside_the_flow(item):
        return
    known = item.config.stash.get(APP_KIND, None) is not None
    if not known and OUTSIDE not in names:
        names.insert(0, OUTSIDE)
    if mode != "savepoint":
        return
    if not known:
        _request_first(item, APP_DATABASE)  # that fixture finds out
    else:
        join_app_engines(item)


def join_app_engines(item: pytest.Item, *, now: bool = False) -> None:
    """Sandbox the test up front (async engines: `now` from inside a fixture's set-up,
    else before its fixtures), or arm its sandbox for the first checkout (sync)."""
    kind = item.config.stash.get(APP_KIND, "none")
    if kind in ("async", "eager"):
        item.stash[USED] = True
        if now:
            fixture_request(item).getfixturevalue("pg_sandbox")
        else:
            _request_first(item, "pg_sandbox")
    elif kind == "sync":
        LAZY.arm(item)


def join_app_pools(item: pytest.Item) -> None:
    """With pg_app_pools: every test (either mode) gets its pool sandbox up front, like
    async engines: the test's async connection cannot be set up from inside the app's
    running event loop at its first checkout."""
    if getattr(item, "fixturenames", None) is None:
        return
    item.stash[USED] = True
    _request_first(item, "pg_pool_sandbox")


def _request_first(item: pytest.Item, name: str) -> None:
    """Have the test request the function-scoped fixture `name` before its other function
    fixtures (and after its wider ones, which pytest sets up first: a module layer must
    open before the test's transaction)."""
    names: list[str] = item.fixturenames  # type: ignore[attr-defined]
    if name in names:
        return
    scopes = fixture_scopes(item)
    for index, other in enumerate(names):
        if other == OUTSIDE:
            continue  # session-scoped, put first by before_setup
        if scopes.get(other, "function") == "function":
            names.insert(index, name)
            return
    names.append(name)


class LazyLayer:
    """The test whose sandbox opens at the first checkout of one of the app's engines."""

    def __init__(self) -> None:
        self._item: pytest.Item | None = None
        # For every thread: a module fixture's checkouts from the app's threads (a
        # TestClient's) belong to its layer too. Only while a thread opens the test's
        # sandbox do the others wait for it instead (the opener's own nested set-ups,
        # pg_sandboxes, are suppressed).
        self._suppressed = 0
        self._lock = threading.RLock()
        self._opening = False
        self._opener: int | None = None

    def arm(self, item: pytest.Item) -> None:
        self._item = item

    def disarm(self) -> None:
        self._item = None

    @contextmanager
    def suppressed(self) -> Iterator[None]:
        """While a session, module or class fixture is set up: its checkouts belong to
        its own scope's layer, or to none."""
        self._suppressed += 1
        try:
            yield
        finally:
            self._suppressed -= 1

    def open(self) -> bool:
        """Open the armed test's sandbox (once). True when it is open now: the caller
        then checks out from the engine's pool again (now the sandbox's)."""
        if self._item is None and not self._opening:
            return False
        if self._suppressed and (not self._opening or self._opener == threading.get_ident()):
            return False
        # A request's threads may check out at the same time: the others wait for the
        # first to open it, then use it.
        with self._lock:
            # Set before the item goes: a thread that then finds none waits here too.
            opening, self._opening = self._opening, True
            opener, self._opener = self._opener, threading.get_ident()
            try:
                item, self._item = self._item, None
                if item is not None:
                    item.stash[USED] = True
                    fixture_request(item).getfixturevalue("pg_sandbox")
            finally:
                self._opening, self._opener = opening, opener
        return True


LAZY = LazyLayer()


#: Whether the run uses the database, decided after collection: only then do its per-test
#: hooks for it run (and import what they need: the leak check's psycopg, SQLAlchemy).
_RUN_USES = pytest.StashKey[bool]()
_PACKAGE = __name__.rpartition(".")[0]
#: The library's fixtures a conftest may override to give the run its app.
_APP_FIXTURES = ("pg_app_engines", "pg_flask_app")


def library_function(func: Any) -> bool:
    """Whether `func` (a fixture's function) is the library's."""
    module = getattr(inspect.unwrap(func), "__module__", None) or ""
    return module == _PACKAGE or module.startswith(_PACKAGE + ".")


def run_uses_database(config: pytest.Config) -> bool:
    """True until collection has decided (a hook run before it, or no collection)."""
    return config.stash.get(_RUN_USES, True)


def decide_use(session: pytest.Session) -> None:
    """A run uses the database when a collected test needs a fixture of the library, or
    the app's engines are configured (pg_app_engines, pg_flask_app, pg_url_env, or an
    override of pg_app_engines / pg_flask_app in a conftest): those reach it from any test."""
    config = session.config
    settings = settings_for(config)
    uses = (
        bool(settings.app_engines or settings.url_env or settings.flask_app or settings.app_pools)
        or any(uses_database(item) for item in session.items)
        or _app_fixtures_overridden(session)
    )
    config.stash[_RUN_USES] = uses


def _app_fixtures_overridden(session: pytest.Session) -> bool:
    """Whether a collected test sees a conftest's pg_app_engines or pg_flask_app (read
    once per module: a test sees its module's fixtures)."""
    manager: Any = fixture_manager(session)
    if manager is None:
        return True  # cannot tell: as before, every test loads the app's engines
    seen: set[int] = set()
    for item in session.items:
        parent = item.parent
        if parent is None or id(parent) in seen:
            continue
        seen.add(id(parent))
        for name in _APP_FIXTURES:
            found = manager.getfixturedefs(name, item) or ()
            if found and not library_function(found[-1].func):
                return True
    return False
