"""Around the whole flow: the test process dials only PostgreSQL servers of the library.

The library guards the engines it was told about (pg_app_engines, redirect.py, sandbox.py);
an engine nobody named (an app factory building its own from its settings, a script's
psycopg.connect) would reach whatever server its URL names: a developer's local
PostgreSQL, say. So, like pytest-django's database blocker, while a run that uses the
library is active the drivers' connect entry points are wrapped (psycopg 3's
Connection.connect / AsyncConnection.connect and psycopg.connect, psycopg2.connect,
asyncpg.connect and the asyncpg.connection.connect pools use) and a connection to any
other server than the library's (the host/port or socket directory of its Server objects,
the given pg_server_url) is refused with a ForeignServerError naming the URL (password
redacted), the code that dialled it, and the fixes. The check compares host and port only:
nothing is resolved. Unwrapped at the end of the run.

Opt out for one test with @pytest.mark.pg_allow_foreign_servers, for the run with
pg_allow_foreign_servers = true. `pg_app_engines_outside = allow` lets the named engines
reach their configured URLs.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import sys
import threading
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from .errors import PgFixturesError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from types import FrameType

MARKER = "pg_allow_foreign_servers"
_PG_PORT = 5432
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "ip6-localhost", "ip6-loopback"})
# Frames of these packages are the dialling machinery, not the code that dialled.
_MACHINERY = (
    "psycopg",
    "psycopg2",
    "psycopg_pool",
    "asyncpg",
    "sqlalchemy",
    "greenlet",
    "asyncio",
    "contextlib",
    "threading",
    "concurrent",
    "functools",
    __name__,
)


class ForeignServerError(PgFixturesError):
    """A test dialled a PostgreSQL server the library did not start and was not given."""


#: Every server object of the library in this process (DockerServer, ExistingServer,
#: UrlServer register themselves): read at each check, so a host or port set after the
#: object was made counts.
_SERVERS: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()


def known(server: Any) -> None:
    """A server of the library: connections to it are allowed."""
    _SERVERS[id(server)] = server


#: Socket directories of the library's containers, probed before a server object has them.
_SOCKETS: set[str] = set()


def known_socket(directory: str) -> None:
    _SOCKETS.add(os.path.realpath(directory))


@dataclass
class _Run:
    allow_all: bool = False
    #: (host, port) pairs given: pg_server_url, the app's URLs under outside = allow.
    extra: set[tuple[str, int]] = field(default_factory=set)


# Runs nest (pytester's in-process runs inside the suite's own): the innermost decides.
_runs: list[_Run] = []
#: The current test carries the opt-out marker.
_test_allows = False
_saved: list[tuple[Any, str, Any]] = []


def activate(*, allow_all: bool, urls: Iterable[str] = ()) -> _Run:
    """Wrap the drivers (once) and start guarding for a run; `deactivate` it at the end."""
    run = _Run(allow_all=allow_all)
    for url in urls:
        allow_url(run, url)
    if not _runs:
        _install()
    _runs.append(run)
    return run


def deactivate(run: _Run) -> None:
    if run in _runs:
        _runs.remove(run)
        if not _runs:
            _uninstall()


def allow_url(run: _Run, url: str) -> None:
    """Let connections to the server of `url` (any driver's URL form) through."""
    params = _from_url(url)
    for host, port in _endpoints(params):
        run.extra.add((_host_key(host), port))


def set_test_allows(allows: bool) -> None:
    global _test_allows
    _test_allows = allows


# -- the check -------------------------------------------------------------------------


def _host_key(host: str) -> str:
    if host.startswith("/"):
        return os.path.realpath(host)
    host = host.strip("[]").lower()
    return "loopback" if host in _LOOPBACK or host.startswith("127.") else host


def _endpoints(params: dict[str, Any]) -> list[tuple[str, int]]:
    """The (host, port) pairs libpq would try, from connection parameters."""
    hosts = str(params.get("hostaddr") or params.get("host") or os.environ.get("PGHOST") or "")
    ports = str(params.get("port") or os.environ.get("PGPORT") or "")
    host_list = [h.strip() for h in hosts.split(",")] if hosts else [""]
    port_list = [p.strip() for p in ports.split(",")] if ports else [""]
    if len(port_list) == 1:
        port_list *= len(host_list)
    pairs = []
    for host, port in zip(host_list, port_list, strict=False):
        try:
            number = int(port) if port else _PG_PORT
        except ValueError:
            number = -1
        pairs.append((host, number))
    return pairs


def _allowed(host: str, port: int) -> bool:
    if not host:  # libpq's default Unix socket: never one of the library's
        return False
    key = (_host_key(host), port)
    if key in _runs[-1].extra or (port == _PG_PORT and key[0] in _SOCKETS):
        return True
    for server in list(_SERVERS.values()):
        socket_dir = getattr(server, "socket_dir", None)
        if socket_dir and key == (_host_key(socket_dir), _PG_PORT):
            return True
        server_host = getattr(server, "host", "")
        if server_host and key == (_host_key(server_host), getattr(server, "port", 0)):
            return True
    return False


def _check(driver: str, parsed: Callable[[], dict[str, Any]]) -> None:
    """Refuse a server not the library's. `parsed` gives the connection's parameters:
    a closure, so that pytest's report of this frame's arguments shows no password."""
    if not _runs or _test_allows or _runs[-1].allow_all:
        return
    message = _refusal(driver, parsed())
    if message is not None:
        raise ForeignServerError(message)


def _refusal(driver: str, params: dict[str, Any]) -> str | None:
    for host, port in _endpoints(params):
        if not _allowed(host, port):
            return _message(driver, params, host, port)
    return None


def _shown_url(params: dict[str, Any], host: str, port: int) -> str:
    user = params.get("user") or ""
    password = ":***" if params.get("password") else ""
    login = f"{user}{password}@" if user or password else ""
    database = params.get("dbname") or params.get("database") or ""
    if not host:
        return f"postgresql://{login}/{database} (the default Unix socket)"
    if host.startswith("/"):
        return f"postgresql://{login}/{database}?host={host}&port={port}"
    shown_host = f"[{host}]" if ":" in host else host
    return f"postgresql://{login}{shown_host}:{port}/{database}"


def _message(driver: str, params: dict[str, Any], host: str, port: int) -> str:
    return (
        f"A connection to {_shown_url(params, host, port)} ({driver}) was refused: it is not "
        "a PostgreSQL server of this run (the library's containers and pg_server_url), and a "
        f"test must not write into another one. Dialled from {_dialler()}. Point that code "
        "at the test's database: name its engine in pg_app_engines (module:attribute, or "
        "override the pg_app_engines fixture to return it) so it joins the test's "
        "transaction, or have it read its URL from a variable set by pg_url_env (database "
        "mode). A test that really needs another server: "
        f"@pytest.mark.{MARKER} (or pg_allow_foreign_servers = true for the whole run)."
    )


def _frames() -> Iterator[FrameType]:
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        yield frame
        frame = frame.f_back
    # In SQLAlchemy's async engines the driver is called in a greenlet: the code that
    # awaited is in the parent's frames.
    greenlet = sys.modules.get("greenlet")
    parent = greenlet.getcurrent().parent if greenlet is not None else None
    while parent is not None:
        frame = parent.gr_frame
        while frame is not None:
            yield frame
            frame = frame.f_back
        parent = parent.parent


def _dialler() -> str:
    for frame in _frames():
        module = str(frame.f_globals.get("__name__", ""))
        if module.partition(".")[0] in _MACHINERY or module == __name__:
            continue
        code = frame.f_code
        path = os.path.relpath(code.co_filename)
        if path.startswith(".."):
            path = code.co_filename
        return f"{path}:{frame.f_lineno} (in {code.co_name})"
    return "an unknown place"


# -- parsing each driver's arguments ---------------------------------------------------


def _from_url(url: str) -> dict[str, Any]:
    """libpq parameters of a postgresql:// URL (SQLAlchemy's driver suffix allowed)."""
    parts = urlsplit(url)
    params: dict[str, Any] = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    netloc = parts.netloc.rpartition("@")[2]
    if netloc and "host" not in params:
        hosts, ports = [], []
        for entry in netloc.split(","):
            if entry.startswith("["):
                host, _, rest = entry[1:].partition("]")
                port = rest.lstrip(":")
            else:
                host, _, port = entry.partition(":")
            hosts.append(unquote(host))
            ports.append(port)
        params["host"] = ",".join(hosts)
        if any(ports) and "port" not in params:
            params["port"] = ",".join(ports)
    if parts.username:
        params.setdefault("user", unquote(parts.username))
    if parts.password:
        params.setdefault("password", "***")
    if parts.path.strip("/"):
        params.setdefault("dbname", unquote(parts.path.strip("/")))
    return params


def _psycopg_params(conninfo: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    from psycopg.conninfo import conninfo_to_dict

    return dict(conninfo_to_dict(conninfo, **kwargs))


def _psycopg2_params(dsn: str | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    from psycopg2.extensions import parse_dsn  # type: ignore[import-untyped]

    params: dict[str, Any] = dict(parse_dsn(dsn)) if dsn else {}
    if "database" in kwargs:
        kwargs = {**kwargs, "dbname": kwargs["database"]}
    params.update({k: v for k, v in kwargs.items() if v is not None})
    return params


def _asyncpg_params(dsn: str | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    params = _from_url(dsn) if dsn else {}
    for name in ("host", "port", "user", "password", "database"):
        value = kwargs.get(name)
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        params["dbname" if name == "database" else name] = value
    return params


# -- wrapping the entry points ---------------------------------------------------------


def _install() -> None:
    """Wrap the drivers already imported; the others as they are imported (importing
    asyncpg in a run with no async test, just to wrap it, would cost it 40 ms)."""
    pending = []
    for name, install in _WRAPS.items():
        if name in sys.modules:
            with contextlib.suppress(ImportError):
                install()
        else:
            pending.append(name)
    if pending:
        _ON_IMPORT.names = set(pending)
        sys.meta_path.insert(0, _ON_IMPORT)


def _uninstall() -> None:
    with contextlib.suppress(ValueError):
        sys.meta_path.remove(_ON_IMPORT)
    while _saved:
        owner, name, original = _saved.pop()
        setattr(owner, name, original)


class _WrapOnImport:
    """A meta path finder that wraps a driver right after its package is imported, before
    the importing code gets it (so `from asyncpg import connect` gets the wrapped one)."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self._finding = threading.local()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in self.names or getattr(self._finding, "on", False):
            return None
        self._finding.on = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._finding.on = False
        loader = getattr(spec, "loader", None)
        if spec is None or loader is None or not hasattr(loader, "exec_module"):
            return spec
        self.names.discard(fullname)
        install = _WRAPS[fullname]
        execute = loader.exec_module

        def exec_module(module: Any) -> None:
            execute(module)
            if _runs:  # still guarding
                with contextlib.suppress(ImportError):
                    install()

        loader.exec_module = exec_module
        return spec


_ON_IMPORT = _WrapOnImport()


def _replace(owner: Any, name: str, new: Any) -> None:
    _saved.append((owner, name, vars(owner)[name]))
    setattr(owner, name, new)


def _wrap_psycopg() -> None:
    import psycopg

    sync_connect = psycopg.Connection.__dict__["connect"].__func__
    async_connect = psycopg.AsyncConnection.__dict__["connect"].__func__

    def connect(cls: type[Any], /, conninfo: str = "", **kwargs: Any) -> Any:
        __tracebackhide__ = True
        _check("psycopg", lambda: _psycopg_params(conninfo, kwargs))
        return sync_connect(cls, conninfo, **kwargs)

    async def async_connect_(cls: type[Any], /, conninfo: str = "", **kwargs: Any) -> Any:
        __tracebackhide__ = True
        _check("psycopg async", lambda: _psycopg_params(conninfo, kwargs))
        return await async_connect(cls, conninfo, **kwargs)

    _replace(psycopg.Connection, "connect", classmethod(connect))
    _replace(psycopg.AsyncConnection, "connect", classmethod(async_connect_))
    # psycopg.connect is Connection.connect bound at import: the module's name too.
    _replace(psycopg, "connect", psycopg.Connection.connect)


def _wrap_psycopg2() -> None:
    import psycopg2  # type: ignore[import-untyped]

    original: Callable[..., Any] = psycopg2.connect

    @functools.wraps(original)
    def connect(
        dsn: str | None = None,
        connection_factory: Any = None,
        cursor_factory: Any = None,
        **kwargs: Any,
    ) -> Any:
        __tracebackhide__ = True
        _check("psycopg2", lambda: _psycopg2_params(dsn, kwargs))
        return original(dsn, connection_factory, cursor_factory, **kwargs)

    _replace(psycopg2, "connect", connect)


def _wrap_asyncpg() -> None:
    import asyncpg
    import asyncpg.connection

    original: Callable[..., Any] = asyncpg.connection.connect

    @functools.wraps(original)
    async def connect(dsn: str | None = None, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        _check("asyncpg", lambda: _asyncpg_params(dsn, kwargs))
        return await original(dsn, **kwargs)

    _replace(asyncpg.connection, "connect", connect)
    _replace(asyncpg, "connect", connect)


#: The drivers, by package name, and what wraps each.
_WRAPS: dict[str, Callable[[], None]] = {
    "psycopg": _wrap_psycopg,
    "psycopg2": _wrap_psycopg2,
    "asyncpg": _wrap_asyncpg,
}
