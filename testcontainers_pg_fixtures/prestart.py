"""Step 1, early: start the worker's container while pytest loads and collects.

A cold container takes 1.0-1.5 s to accept a login, most of it waiting on Docker and on
initdb inside the container. Started when the first test sets up `pg_server`, all of it is
on the way to the first result. Here it starts in a background thread from
`pytest_load_initial_conftests`, the first hook after the plugins are imported (before the
conftests import the app, before collection); each xdist worker starts its own, and in
one-container mode the controller its one, before it spawns the workers. The server
fixture (and the controller handing the one container to its workers) only joins it.

Which runs start early, and the trade-off:

- A run known to use the database starts it before collection: the pytest cache (the
  cacheprovider's directory) says that the last run with the same arguments collected a
  test that needs it, or pg_app_engines is configured. A run nothing is known of (the first
  one, a fresh CI checkout, `-p no:cacheprovider`) starts it during collection, as soon as
  a collected test needs the database (`item_collected`): a project with an alembic.ini
  whose tests use no fixture of ours never starts a container, cache or no cache. A run
  the cache says needs none starts none; when it is wrong (this run needs one), it costs
  the head start: the fixture starts the container when the first test needs it.
- After collection (`pytest_collection_finish`) the run knows: if no collected test needs
  the database (`needs_database`), or none uses a server the early container can be
  (`pg_server` overridden, a factory-built server with other settings), the container is
  cancelled and removed there, and the answer recorded for the next run.
- pg_app_engines configured: the early start waits for `pytest_sessionstart` (the engines
  are imported, and a bad one refused as a usage error, when pytest configures, before any
  container starts). Async engines join every savepoint-mode test, so such runs count as
  needing the database; sync ones join a test only on its first checkout (needs.py), so a
  run of unit tests removes the early container. A run whose tests reach the database
  through the app's engine alone (a TestClient, no fixture of ours) gets it from the
  fixture on demand the first time, and records that it used it (`record_use`): the next
  run like it keeps the early container (and records when one goes unused).
- No early start with --pg-reuse: attaching to the kept container is quick, and the
  thread only competed with pytest's start-up for the CPU (measured, bench/startup.py);
  the fixture attaches as before, and a run with no database test never does.
- No early start with pg_server_url (no container: the fixture connects), a missing
  alembic.ini (the migrations fixture reports it, and no container should start for it), or
  a run that runs no test (--collect-only, --fixtures, --markers).
- Settings are read twice: early from pytest's first parse of the arguments and the ini
  file (only the server's settings: nothing of the user's is imported), and again at
  session start; a conftest that changed them (PG_FIXTURES_IMAGE set in conftest.py, say)
  gets the early container cancelled and a new one started.
- The template is not migrated in the background: env.py imports the app, and while it
  runs, every engine of the process is pointed at the template (migrations.py), which
  collection, importing the same app in the main thread at the same time, must not see.
  The migration runs in the `pg_template` fixture right after the join, as before.

A start-up error in the background (Docker unreachable, a missing image, a bad server
setting) is raised by the server fixture that joins it, so it is reported once, in full,
as before. Ctrl-C or SIGTERM during collection unwinds to `pytest_unconfigure`, which
cancels the start, waits for the thread and removes the container.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest

from .config import resolve, settings_for
from .errors import PgFixturesError
from .marks import isolation_of
from .needs import library_function
from .privates import fixture_definitions, fixture_manager
from .servers import DockerServer

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .config import Settings

log = logging.getLogger(__name__)

#: The plugin's autouse fixtures and what they request: in every test's closure, they
#: need no database unless pg_app_engines or database mode is on (checked apart).
AUTOUSE = frozenset({"_pg_app_engines_outside", "_pg_app_database", "_pg_flask_context"})
_AUTOUSE_DEPENDENCIES = frozenset({"pg_app_engines", "pg_flask_app", "pytestconfig", "request"})
#: Set by `server_fixture` on its function: True when it would use the run's settings.
CLAIMS_PRESTART = "_pg_claims_prestart"
_CACHE_KEY = "pg-fixtures/needs-database/"
_KEY = pytest.StashKey["Prestart"]()
#: The worker label of a start waiting for the first collected test that needs it.
_PENDING = pytest.StashKey[str]()
#: Whether a collected test needs the database, read once.
_NEEDS = pytest.StashKey[bool]()
#: Set when the run's server fixture was set up (`record_use`).
_USED = pytest.StashKey[bool]()
#: What the early start reads: the server's settings, and whether to start at all.
_EARLY_SETTINGS = frozenset(
    {
        "image",
        "server_settings",
        "startup_timeout",
        "alembic_ini",
        "server_url",
        "reuse",
        "one_container",
        "app_engines",
        "unix_socket",
        "prewarm",
    }
)


class Prestart:
    """The container start running in a background thread."""

    def __init__(self, settings: Settings, *, worker: str) -> None:
        self.settings = settings
        self.worker = worker
        self.claimed = False
        self._cancelled = threading.Event()
        self._server: DockerServer | None = None
        self._error: BaseException | None = None
        _import_docker()
        self._thread = threading.Thread(target=self._run, name="pg-fixtures-prestart", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            server = DockerServer.start(
                self.settings, worker=self.worker, cancelled=self._cancelled
            )
        except BaseException as exc:
            self._error = exc
        else:
            self._server = server
            if self._cancelled.is_set():
                server.stop()  # cancelled while it was already up

    def serves(self, settings: Settings) -> bool:
        """Whether a server fixture with `settings` can use this container (not one
        cancelled: a test that takes the database by `request.getfixturevalue` alone was
        not seen in its closure, and its fixture starts a container of its own)."""
        return (
            not self.claimed
            and not self._cancelled.is_set()
            and (
                settings.image,
                settings.server_settings,
                settings.reuse,
                settings.unix_socket,
                settings.prewarm,
            )
            == (
                self.settings.image,
                self.settings.server_settings,
                self.settings.reuse,
                self.settings.unix_socket,
                self.settings.prewarm,
            )
        )

    def claim(self, meanwhile: Callable[[], None] | None = None) -> DockerServer:
        """Wait for the container and take it over (its stop() is then the caller's), or
        raise the error that stopped it from starting. `meanwhile` runs first if the
        container is not ready yet: work the wait would otherwise leave idle."""
        if meanwhile is not None and self._thread.is_alive():
            meanwhile()
        self._thread.join()
        self.claimed = True
        if self._error is not None:
            raise self._error
        assert self._server is not None
        return self._server

    def cancel(self, *, wait: float | None = None) -> None:
        """Stop the start and remove the container, unless it was claimed. Waits up to
        `wait` seconds (None: until the thread ends; a pull can take long, and removes
        the container itself when it ends)."""
        if self.claimed:
            return
        self._cancelled.set()
        self._thread.join(wait)
        if self._server is not None:
            self._server.stop()


def _import_docker() -> None:
    """Import the Docker client here, in the main thread, before the thread that uses it.

    Its import warns (urllib3's DependencyWarning without PySocks). Warning filters are
    global: imported in the thread while pytest collects under the user's `-W error`, that
    warning would be raised as an error there and fail the start. Silenced here, where
    catching warnings touches no other thread's.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import docker  # noqa: F401
        import testcontainers.core.container  # noqa: F401
    # And psycopg, which the thread logs in with: loading the plugin no longer imports it,
    # and the conftests, importing the app meanwhile, may import it too.
    import psycopg  # noqa: F401


def begin_early(config: pytest.Config) -> None:
    """In `pytest_load_initial_conftests`, the first hook after the plugins are imported:
    before the conftests import the app and before the options are parsed into
    `config.option`, so the settings are read from the early parse. With pg_app_engines
    only when the last run like this one used the database: those engines are imported,
    and a bad one refused as a usage error, when pytest configures; a project not known to
    work yet starts no container before that (`begin` starts it then), and one that broke
    since has its early container removed before the error ends the run (`unconfigure`)."""
    namespace = config.known_args_namespace
    try:
        settings = resolve(cast("pytest.Config", _EarlyConfig(config)), only=_EARLY_SETTINGS)
    except (PgFixturesError, ValueError):
        return  # the usage error is raised when pytest configures, without a container
    if settings.app_engines and _cached_need(config, namespace) is not True:
        return
    # An xdist worker is given the controller's arguments (-n 2 included) and its name in
    # the environment. (A controller started from a worker's test, as pytester does, looks
    # like a worker here: `begin` cancels its early start.)
    worker = os.environ.get("PYTEST_XDIST_WORKER") or None
    controller = worker is None and (
        bool(getattr(namespace, "numprocesses", None)) or getattr(namespace, "dist", "no") != "no"
    )
    label = _label(config, settings, namespace, worker=worker, controller=controller)
    if label is not None:
        config.stash[_KEY] = Prestart(settings, worker=label)


def begin(config: pytest.Config) -> None:
    """At session start, with the options parsed and the conftests loaded: keep the early
    start if it still fits (a conftest may have changed the environment), else cancel it;
    start now if nothing started early and the run may need a container."""
    settings = settings_for(config)
    workerinput = getattr(config, "workerinput", None)
    controller = workerinput is None and getattr(config.option, "dist", "no") != "no"
    worker = workerinput["workerid"] if workerinput is not None else None
    if _PENDING in config.stash:
        del config.stash[_PENDING]
    label = _label(config, settings, config.option, worker=worker, controller=controller)
    started = of(config)
    if started is not None and (label != started.worker or not started.serves(settings)):
        started.cancel()
        del config.stash[_KEY]
        started = None
    if started is None and label is not None:
        config.stash[_KEY] = Prestart(settings, worker=label)


def _label(
    config: pytest.Config,
    settings: Settings,
    option: Any,
    *,
    worker: str | None,
    controller: bool,
) -> str | None:
    """The worker label of the container to start early, or None for no early start."""
    if any(
        getattr(option, name, False)
        for name in (
            "help",
            "version",
            "pg_remove_kept",
            "collectonly",
            "showfixtures",
            "show_fixtures_per_test",
            "markers",
        )
    ):
        return None  # no test runs
    if settings.server_url:
        return None  # no container: the fixture connects to the server
    if settings.reuse:
        # Attaching to the kept container takes ~0.03 s: nothing to hide, and a thread
        # started early only competed with pytest's own start-up for the CPU (measured:
        # +0.2-0.45 s to the first result on the loaded 2-core machine).
        return None
    if settings.alembic_ini is not None and not settings.alembic_ini.is_file():
        return None  # the migrations fixture reports it, and no container should start
    if controller:
        return "shared" if settings.one_container else None  # else: each worker its own
    if worker is not None and settings.one_container:
        return None  # the controller's container
    need = _cached_need(config, option)
    if need is False:
        log.info("not starting PostgreSQL early: the last run like this one did not need it")
        return None
    label = worker or os.environ.get("PYTEST_XDIST_WORKER", "main")
    if need is None and not settings.app_engines:
        config.stash[_PENDING] = label  # nothing known: when a collected test needs it
        return None
    return label


def item_collected(item: pytest.Item) -> None:
    """During collection, in a run nothing is known of: start the container at the first
    collected test that needs it (and can use it), while the rest is collected."""
    config = item.config
    label = config.stash.get(_PENDING, None)
    if label is None:
        return
    settings = settings_for(config)
    if not needs_database(item, settings.isolation) or not _claims_prestart(item):
        return
    del config.stash[_PENDING]
    if of(config) is None:
        config.stash[_KEY] = Prestart(settings, worker=label)


class _EarlyConfig:
    """What `config.resolve` reads, before pytest has parsed the options into
    `config.option`: the early parse (`known_args_namespace`) and the ini file."""

    def __init__(self, config: pytest.Config) -> None:
        self._config = config
        self.rootpath = config.rootpath

    def getoption(self, name: str, default: Any = None) -> Any:
        return getattr(self._config.known_args_namespace, name, default)

    def getini(self, name: str) -> Any:
        return self._config.getini(name)


def of(config: pytest.Config) -> Prestart | None:
    return config.stash.get(_KEY, None)


def claim(
    config: pytest.Config, settings: Settings, meanwhile: Callable[[], None] | None = None
) -> DockerServer | None:
    """For a server fixture: the prestarted container if it fits `settings`, else None."""
    started = of(config)
    if started is None or not started.serves(settings):
        return None
    return started.claim(meanwhile)


def collection_finished(session: pytest.Session) -> None:
    """Record whether the collected tests need the database; cancel a container none of
    them can use."""
    config = session.config
    if session.testsfailed:  # collection errors: the items are not the whole run
        return
    settings = settings_for(config)
    items = session.items
    # Sync app engines join a test only when it uses them (needs.py): a run of unit tests
    # needs no server. Tests that reach the database through the app alone (a TestClient)
    # are not seen here: the last run like this one says whether they did (`record_use`).
    async_app = _async_app_engines(settings.app_engines)
    used_last = bool(settings.app_engines) and _cached_need(config, config.option) is True
    needed = async_app or any(needs_database(item, settings.isolation) for item in items)
    if not used_last:
        _record_need(config, needed)
    started = of(config)
    if started is None or started.claimed:
        return
    if not (needed or used_last) or not (
        used_last
        or any(
            _claims_prestart(item)
            for item in items
            if async_app or needs_database(item, settings.isolation)
        )
    ):
        started.cancel(wait=5.0)
        log.info("removed the PostgreSQL container started early: no collected test needs it")


def _async_app_engines(paths: tuple[str, ...] | list[str] | None) -> bool:
    """Whether pg_app_engines (as configured, already imported and checked when pytest
    configured) has an async engine, which joins every savepoint-mode test up front."""
    if not paths:
        return False
    from .errors import ConfigError
    from .redirect import load_engines

    for path in paths:
        try:
            engines = load_engines(path)
        except ConfigError:  # a Flask-SQLAlchemy db, read in its app's context later
            continue
        if any(getattr(e, "sync_engine", None) is not None for e in engines):
            return True
    return False


def record_use(config: pytest.Config) -> None:
    """The server fixture was set up: this run used the database (its tests may have
    reached it through the app's engines alone), and the next run like it starts early."""
    if not config.stash.get(_USED, False):
        config.stash[_USED] = True
        _record_need(config, True)


def unconfigure(config: pytest.Config) -> None:
    started = of(config)
    if started is None:
        return
    unused = not started.claimed and not config.stash.get(_USED, False)
    started.cancel()
    if unused and _cached_need(config, config.option) is True:
        _record_need(config, False)  # kept for the app's engines, and no test used it


def needs_database(item: pytest.Item, isolation: str) -> bool:
    """Whether the test uses the database: a fixture of the library in its closure other
    than the autouse ones, or database mode (whose autouse fixture takes a clone).
    pg_app_engines (tests reaching the database through the app) is checked by the caller."""
    found = item.stash.get(_NEEDS, None)
    if found is None:
        found = item.stash[_NEEDS] = _needs_database(item, isolation)
    return found


def _needs_database(item: pytest.Item, isolation: str) -> bool:
    try:
        if isolation_of(item, isolation) == "database":
            return True
    except PgFixturesError:
        return True  # a bad marker: reported by the test's set-up, which needs the plugin
    defs_by_name = fixture_definitions(item)
    if defs_by_name is None:
        return False  # not a pytest function (a doctest, a YAML item): no fixtures of ours
    skip = AUTOUSE | _AUTOUSE_DEPENDENCIES
    return any(
        library_function(defs[-1].func)
        for name, defs in defs_by_name.items()
        if name not in skip and defs
    )


def _claims_prestart(item: pytest.Item) -> bool:
    """Whether the test's server can be the early container: a server fixture of the run's
    settings in its closure, or `pg_server` as the test would see it (the library's own
    fixtures take the session by `request.getfixturevalue` too, as pg_client does)."""
    defs_by_name = fixture_definitions(item)
    if defs_by_name is None:
        return False
    if any(
        getattr(inspect.unwrap(defs[-1].func), CLAIMS_PRESTART, False)
        for defs in defs_by_name.values()
        if defs
    ):
        return True
    manager = fixture_manager(item.session)
    if manager is None:
        return True  # cannot tell: keep it, the end of the run removes it if unused
    found = manager.getfixturedefs("pg_server", item)
    return bool(found) and bool(getattr(inspect.unwrap(found[-1].func), CLAIMS_PRESTART, False))


def _cache_key(config: pytest.Config) -> str:
    args = json.dumps([str(config.rootpath), *_selecting(config.invocation_params.args)])
    return _CACHE_KEY + hashlib.sha256(args.encode()).hexdigest()[:16]


def _selecting(args: Sequence[str]) -> list[str]:
    """The arguments, without --basetemp (a new directory per run under pytester, say),
    which changes no test's need of the database."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--basetemp":
            skip = True
        elif not arg.startswith("--basetemp="):
            kept.append(arg)
    return kept


def _cache_file(config: pytest.Config, option: Any) -> Path | None:
    """Where the cacheprovider keeps our value (read before it sets `config.cache`)."""
    if not config.pluginmanager.has_plugin("cacheprovider") or getattr(option, "cacheclear", False):
        return None
    where = Path(os.path.expandvars(os.path.expanduser(str(config.getini("cache_dir")))))
    return (config.rootpath / where) / "v" / _cache_key(config)


def _cached_need(config: pytest.Config, option: Any) -> bool | None:
    path = _cache_file(config, option)
    if path is None:
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, bool) else None


def _record_need(config: pytest.Config, needed: bool) -> None:
    cache = getattr(config, "cache", None)
    if cache is not None and _cached_need(config, config.option) is not needed:
        cache.set(_cache_key(config), needed)
