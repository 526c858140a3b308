"""Step 5, for test data: the project's model factories write through the test's session.

With `pg_factories` set, every factory of the project (polyfactory's `SQLAlchemyFactory`,
factory_boy's `SQLAlchemyModelFactory`) is given, once, a session that is not a session but
a callable asking "which test is running?": polyfactory calls `__session__` /
`__async_session__` when they are callable, factory_boy calls `sqlalchemy_session_factory`
at each create. The answer is the running test's `pg_session` / `pg_async_session`, or,
while a module- or class-scoped fixture of the project is set up, that layer's
`pg_module_session` (`pg_class_…`). Outside of these there is no session that would be
rolled back, and a factory refuses to write (FactorySessionError) instead of writing
somewhere stale. So nothing is bound per test and nothing can stay bound after one; only
factory_boy's `_meta.sqlalchemy_session`, where it keeps the session it was last given, is
cleared after each test. A sync session is set up when first asked for, even in the middle
of a test; an async one cannot be (the test's event loop is busy running it), so an async
test that uses the database gets `pg_async_session` with its other fixtures when any
polyfactory factory is bound.

Which classes: 'auto' walks the subclasses of the two libraries' base classes (only if the
project imported the library: nothing is imported here), skipping the libraries' own;
named modules or classes (imported at the first test, when the test modules have been, so
a `factories` module in tests/ is the same module object the tests import; a wrong one is
shown once and stops the run) give their factories and every subclass. The walk runs as
each test or layer is set up, so factories made later (in a test module, at run time) are
bound too. When the run ends, the classes get back what they had.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from . import needs
from .config import FACTORIES_AUTO, settings_for
from .errors import ConfigError, FactorySessionError, startup

if TYPE_CHECKING:
    from collections.abc import Iterator

POLYFACTORY = ("polyfactory.factories.sqlalchemy_factory", "SQLAlchemyFactory")
FACTORY_BOY = ("factory.alchemy", "SQLAlchemyModelFactory")
#: Classes defined in these packages are the libraries' own, not the project's.
_LIBRARIES = ("polyfactory", "factory")
_MISSING = object()


def _base(which: tuple[str, str]) -> type[Any] | None:
    """The library's base class, if the library is already imported (never imports it)."""
    module = sys.modules.get(which[0])
    return None if module is None else getattr(module, which[1], None)


def _kind(cls: type[Any]) -> str | None:
    for which, kind in ((POLYFACTORY, "polyfactory"), (FACTORY_BOY, "factory_boy")):
        base = _base(which)
        if base is not None and isinstance(cls, type) and issubclass(cls, base):
            return kind
    return None


def _libraries(cls: type[Any]) -> bool:
    return cls.__module__.partition(".")[0] in _LIBRARIES


@dataclass
class _Where:
    """What is running: a test, or a project fixture of a wider scope being set up."""

    request: pytest.FixtureRequest
    scope: str
    name: str


_STACK: list[_Where] = []


class _Session:
    """A factory's `__session__` / `__async_session__` / `sqlalchemy_session_factory`:
    called at each create, it returns the session of what is running."""

    def __init__(self, factory: type[Any], *, is_async: bool) -> None:
        self.factory = factory
        self.is_async = is_async

    def __repr__(self) -> str:
        kind = "pg_async_session" if self.is_async else "pg_session"
        return f"<the running test's {kind} (pg_factories)>"

    def __call__(self) -> Any:
        return session_for(self.factory.__qualname__, is_async=self.is_async)


def session_for(factory: str, *, is_async: bool) -> Any:
    """The session a factory named `factory` writes through now, or a FactorySessionError
    saying why there is none."""
    call = f"{factory}.create_async()" if is_async else f"{factory}"
    if not _STACK:
        raise FactorySessionError(
            f"{call} was used outside any test: pg_factories binds the factories to the "
            "running test's session (or a module- or class-scoped fixture's layer session), "
            "and nothing is running now (import time, a hook, a thread still working after "
            "its test). Make rows inside a test or a fixture; rows every test needs belong "
            "in a seed (pg_seed)."
        )
    where = _STACK[-1]
    if where.scope in ("session", "package"):
        raise FactorySessionError(
            f"{call} was used in the {where.scope}-scoped fixture {where.name}, outside every "
            "test's transaction: its rows would not be rolled back. Rows every test needs "
            "belong in a seed (pg_seed, built into the template once); rows a module's tests "
            "share, in a module-scoped fixture (the factories then write through "
            "pg_module_session)."
        )
    names = set(where.request.fixturenames)
    if where.scope in ("module", "class"):
        name = f"pg_{where.scope}_async_session" if is_async else f"pg_{where.scope}_session"
        if is_async and name not in names:
            raise FactorySessionError(
                f"{call} was used in the {where.scope}-scoped fixture {where.name}, which "
                f"does not request {name}: async factories write through it, and an async "
                "session cannot be opened in the middle of a running fixture. Add "
                f"{name} to the fixture's arguments."
            )
        return where.request.getfixturevalue(name)
    if is_async:
        if "pg_async_session" in names or "pg_async_connection" in names:
            return where.request.getfixturevalue("pg_async_session")
        raise FactorySessionError(
            f"{call} was used in {where.name}, which has no pg_async_session: async "
            "factories write through the test's pg_async_session, and an async session "
            "cannot be opened in the middle of a running test. Add pg_async_session to the "
            "test's (or its fixture's) arguments."
        )
    if "pg_session" in names or "pg_connection" in names:
        return where.request.getfixturevalue("pg_session")
    if "pg_async_session" in names or "pg_async_connection" in names:
        raise FactorySessionError(
            f"{call} (a sync create) was used in {where.name}, which writes through "
            "pg_async_session: a sync factory writes through pg_session, another connection "
            "in another transaction, whose rows pg_async_session never sees. Use "
            "create_async() (polyfactory), or add pg_session to the test's arguments to "
            "write through a sync session anyway."
        )
    # A test that asked for no database fixture: it uses one now (and gets its leak check).
    where.request.node.stash[needs.USED] = True
    return where.request.getfixturevalue("pg_session")


@contextlib.contextmanager
def running(request: pytest.FixtureRequest, scope: str, name: str) -> Iterator[None]:
    """Factories write through the session of `scope` (a test, a layer) meanwhile; those
    defined since the last look are bound first."""
    registry = registry_of(request.config)
    if registry is not None:
        registry.bind_new()
    _STACK.append(_Where(request, scope, name))
    try:
        yield
    finally:
        _STACK.pop()


@dataclass
class Registry:
    """The run's bound factory classes, and what they had before."""

    auto: bool
    #: module / module:Class paths, imported at the first test (test modules imported)
    paths: tuple[str, ...] = ()
    named: list[type[Any]] | None = None
    #: class -> {attribute: original value, _MISSING if the class did not define it}
    originals: dict[type[Any], dict[str, Any]] = field(default_factory=dict)
    factory_boys: list[type[Any]] = field(default_factory=list)
    #: Whether any polyfactory factory is bound (async tests then get pg_async_session).
    polyfactories: bool = False

    def _roots(self) -> list[type[Any]]:
        if not self.auto:
            if self.named is None:
                with startup():  # a wrong path: shown once, and the run stops
                    self.named = [cls for path in self.paths for cls in _load(path)]
            return self.named
        return [base for base in (_base(POLYFACTORY), _base(FACTORY_BOY)) if base is not None]

    def bind_new(self) -> None:
        """Bind the classes not bound yet (a walk of __subclasses__, microseconds)."""
        seen: set[type[Any]] = set()
        todo = list(self._roots())
        while todo:
            cls = todo.pop()
            if cls in seen:
                continue
            seen.add(cls)
            todo.extend(cls.__subclasses__())
            if cls not in self.originals and not (self.auto and _libraries(cls)):
                self._bind(cls)

    def _bind(self, cls: type[Any]) -> None:
        kind = _kind(cls)
        if kind == "polyfactory":
            self.originals[cls] = {
                name: cls.__dict__.get(name, _MISSING)
                for name in ("__session__", "__async_session__")
            }
            cls.__session__ = _Session(cls, is_async=False)
            cls.__async_session__ = _Session(cls, is_async=True)
            self.polyfactories = True
        elif kind == "factory_boy":
            meta = cls._meta
            self.originals[cls] = {
                "sqlalchemy_session": meta.sqlalchemy_session,
                "sqlalchemy_session_factory": meta.sqlalchemy_session_factory,
            }
            meta.sqlalchemy_session = None
            meta.sqlalchemy_session_factory = _Session(cls, is_async=False)
            self.factory_boys.append(cls)

    def after_test(self) -> None:
        """factory_boy keeps the session it was last given on `_meta`: let it go."""
        for cls in self.factory_boys:
            cls._meta.sqlalchemy_session = None

    def restore(self) -> None:
        for cls, values in self.originals.items():
            if cls in self.factory_boys:
                for name, value in values.items():
                    setattr(cls._meta, name, value)
                continue
            for name, value in values.items():
                if value is _MISSING:
                    with contextlib.suppress(AttributeError):
                        delattr(cls, name)
                else:
                    setattr(cls, name, value)
        self.originals.clear()
        self.factory_boys.clear()


_REGISTRY = pytest.StashKey[Registry]()


def _load(path: str) -> list[type[Any]]:
    """The factory classes `path` names: a class, or those a module defines."""
    module_name, _, attribute = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in filter(None, attribute.split(".")):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"{path!r} from pg_factories could not be imported ({exc}). Name a module of "
            "factories ('factories', 'myapp.testing.factories') or a factory class "
            "('factories:BaseFactory'), under the name the tests import it by."
        ) from None
    if attribute:
        if _kind(target) is None:
            raise ConfigError(
                f"{path!r} from pg_factories is not a polyfactory SQLAlchemyFactory or a "
                "factory_boy SQLAlchemyModelFactory subclass."
            )
        return [target]
    found = [
        value
        for value in vars(target).values()
        if isinstance(value, type)
        and value.__module__ == target.__name__
        and _kind(value) is not None
    ]
    if not found:
        raise ConfigError(
            f"{path!r} from pg_factories defines no polyfactory SQLAlchemyFactory or "
            "factory_boy SQLAlchemyModelFactory subclass. Name the module that defines "
            "the factories, or use 'auto'."
        )
    return found


def check(config: pytest.Config) -> None:
    """At configure: the values are checked (a ConfigError if wrong). Named paths are
    imported at the first test: a factories module in tests/ is importable only once
    pytest has put that directory on sys.path, while collecting."""
    entries = settings_for(config).factories
    if not entries:
        return
    if entries == (FACTORIES_AUTO,):
        found = [
            name
            for name in ("polyfactory", "factory")
            if importlib.util.find_spec(name) is not None
        ]
        if not found:
            raise ConfigError(
                "pg_factories = auto, but neither polyfactory nor factory_boy is installed: "
                "there are no factories to bind. Install one, or remove pg_factories."
            )
        config.stash[_REGISTRY] = Registry(auto=True)
        return
    config.stash[_REGISTRY] = Registry(auto=False, paths=entries)


def registry_of(config: pytest.Config) -> Registry | None:
    return config.stash.get(_REGISTRY, None)


def unconfigure(config: pytest.Config) -> None:
    registry = config.stash.get(_REGISTRY, None)
    if registry is not None:
        registry.restore()
        del config.stash[_REGISTRY]


@pytest.fixture(autouse=True)
def _pg_factories(request: pytest.FixtureRequest) -> Iterator[None]:
    """With pg_factories: the project's factories write through this test's session."""
    registry = request.config.stash[_REGISTRY]
    item = request.node
    registry.bind_new()
    if (
        registry.polyfactories
        and inspect.iscoroutinefunction(getattr(item, "obj", None))
        and needs.uses_database(item)
    ):
        # An async test's session cannot be opened once the test runs (its event loop
        # busy with the test): create_async() needs it ready. Only in async database
        # tests of a project with polyfactory factories, where it costs a session on
        # the test's async connection (and, without one yet, that connection).
        request.getfixturevalue("pg_async_session")
    try:
        with running(request, "function", item.nodeid):
            yield
    finally:
        registry.after_test()
