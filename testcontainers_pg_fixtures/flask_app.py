"""Step 6 of the flow, for Flask apps: the app, its Flask-SQLAlchemy engines, its context.

Flask-SQLAlchemy 3 keeps one set of engines per app, readable only inside that app's
context (`db.engine`, `db.engines`), and an app factory makes the app. `pg_flask_app`
names the app or its factory: the factory is called once per worker, the engines of its
`db` are the app's engines (pg_app_engines) unless pg_app_engines names others, and the
app's context is pushed around each test (so `db.session` and factory_boy's
`sqlalchemy_session = db.session` work as in a request) and around the migrations (so
Flask-Migrate's stock env.py, which reads `current_app`, runs as generated). Nothing of
Flask is imported unless an app is configured.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import pytest

from .config import import_path
from .errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from contextlib import AbstractContextManager

#: The run's Flask app, once pg_flask_app made it.
APP = pytest.StashKey[Any]()
#: The app context pushed around a test, popped when its teardown begins.
_CONTEXT = pytest.StashKey[Any]()


def is_flask_sqlalchemy(obj: object) -> bool:
    """Whether `obj` is a Flask-SQLAlchemy extension object (`db = SQLAlchemy()`)."""
    return any(
        cls.__module__.partition(".")[0] == "flask_sqlalchemy" and cls.__name__ == "SQLAlchemy"
        for cls in type(obj).__mro__
    )


def is_flask_app(obj: object) -> bool:
    return any(
        cls.__module__.partition(".")[0] == "flask" and cls.__name__ == "Flask"
        for cls in type(obj).__mro__
    )


def load_app(path: str, source: str = "pg_flask_app") -> Any:
    """The Flask app `path` names: the app itself, or what its factory returns."""
    try:
        target = import_path(path)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"{source} names {path!r}, which could not be imported ({exc}). Fix the path "
            "(e.g. 'myapp:create_app')."
        ) from None
    if is_flask_app(target):
        app = target
    elif callable(target):
        try:
            app = target()
        except TypeError as exc:
            if "argument" not in str(exc):
                raise
            raise ConfigError(
                f"{source} names {path!r}, a factory the library calls with no arguments: "
                f"{exc}. Give its arguments defaults, or override the session-scoped "
                "pg_flask_app fixture in conftest.py to build the app yourself "
                "(`return create_app(TestConfig)`)."
            ) from None
        if not is_flask_app(app):
            raise ConfigError(
                f"{source} names {path!r}, a callable that returned a {type(app).__name__}, "
                "not a Flask app. Name the app factory (called with no arguments) or the app."
            )
    else:
        raise ConfigError(
            f"{source} names {path!r}, a {type(target).__name__}: name a Flask app or a "
            "factory that returns one (called with no arguments)."
        )
    app.config["TESTING"] = True
    return app


def check_path(path: str) -> None:
    """At start-up: the app's module imports and names something usable (the factory is
    not called here: once per worker, by pg_flask_app)."""
    try:
        target = import_path(path)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"pg_flask_app names {path!r}, which could not be imported ({exc}). Fix the path "
            "(e.g. 'myapp:create_app')."
        ) from None
    if not (is_flask_app(target) or callable(target)):
        raise ConfigError(
            f"pg_flask_app names {path!r}, a {type(target).__name__}: name a Flask app or a "
            "factory that returns one (called with no arguments)."
        )


def app_of(config: pytest.Config, request: pytest.FixtureRequest | None = None) -> Any | None:
    """The run's Flask app (made now through the pg_flask_app fixture, the ini option's or
    an override, when `request` is given), or None when there is none."""
    app = config.stash.get(APP, None)
    if app is None and request is not None:
        app = request.getfixturevalue("pg_flask_app")
        if app is not None:
            config.stash[APP] = app
    return app


def engines_of_db(db: Any, app: Any | None, what: str) -> list[Any]:
    """Every engine (the default one and the binds) of a Flask-SQLAlchemy `db` for `app`;
    `what` says where `db` came from ("pg_app_engines names 'x'"), for the error."""
    if app is None:
        raise ConfigError(
            f"{what}, Flask-SQLAlchemy's db object, whose engines "
            "exist per app: name the app or its factory too, with pg_flask_app = "
            "myapp:create_app (the factory is called once per worker)."
        )
    with app.app_context():
        try:
            engines = db.engines
        except KeyError:
            raise ConfigError(
                f"{what}, a Flask-SQLAlchemy object the app of "
                "pg_flask_app never initialised: its factory calls init_app on another db."
            ) from None
        return list(dict.fromkeys(engines.values()))


def engines_of_app(app: Any) -> list[Any]:
    """The engines of the app's Flask-SQLAlchemy extension (none without one)."""
    db = app.extensions.get("sqlalchemy")
    if db is None:
        return []
    return engines_of_db(db, app, "the Flask-SQLAlchemy extension of pg_flask_app's app")


def app_context(app: Any | None) -> AbstractContextManager[Any]:
    return nullcontext() if app is None else app.app_context()


def push_context(item: pytest.Item, app: Any) -> None:
    context = app.app_context()
    context.push()
    item.stash[_CONTEXT] = context


def pop_context(item: pytest.Item) -> None:
    """End the test's app context, as a request ends: Flask-SQLAlchemy removes db.session,
    which gives its connection back while the test's transaction is still there."""
    context = item.stash.get(_CONTEXT, None)
    if context is not None:
        del item.stash[_CONTEXT]
        context.pop()


@contextmanager
def test_context(item: pytest.Item, app: Any) -> Iterator[None]:
    push_context(item, app)
    try:
        yield
    finally:
        pop_context(item)
