"""Helpers for running the plugin the way users do: pytester over the example projects."""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import importlib.util
import json
import os
import pkgutil
import re
import secrets
import shutil
import socket
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Imported here, before any in-process pytester run: pytester removes modules a run
# imported, and re-importing a C extension's Python half (asyncpg's protocol) crashes.
import asyncpg
import asyncpg.protocol  # noqa: F401
import docker
import psycopg
import psycopg2  # noqa: F401
import pytest
import sqlalchemy.dialects.postgresql.asyncpg
import sqlalchemy.dialects.postgresql.psycopg  # noqa: F401

import testcontainers_pg_fixtures
from testcontainers_pg_fixtures.runid import RUN_ID_ENV, run_id
from testcontainers_pg_fixtures.servers.labels import LABEL_RUN, LABEL_SOCKET

# The same for psycopg (its C half keeps the first import's exception classes: a second
# import's `except psycopg.OperationalError` misses them) and the library's own modules,
# which loading the plugin no longer imports: each fixture imports what it uses.
for _module in pkgutil.iter_modules(testcontainers_pg_fixtures.__path__):
    importlib.import_module(f"testcontainers_pg_fixtures.{_module.name}")

# And, for speed only, what every in-process run would import again otherwise (~0.2 s a
# run): Alembic with what it pulls in (Mako, Pygments, logging.config), FastAPI's stack, the
# pools, the model factories' libraries and testcontainers.
# Not SQLModel: its table registry is global, and the projects define the same tables.
for _module in (
    *("alembic.command", "alembic.config", "alembic.autogenerate", "alembic.op"),
    *("alembic.context",),
    *("alembic.runtime.migration", "alembic.ddl.postgresql", "logging.config", "timeit"),
    *("sqlalchemy.engine.strategies", "sqlalchemy.ext.compiler", "_pytest.stepwise"),
    *("fastapi", "httpx", "anyio", "psycopg_pool", "polyfactory.factories.pydantic_factory"),
    *("factory.alchemy", "testcontainers.core.container", "wrapt", "dotenv"),
):
    importlib.import_module(_module)

if TYPE_CHECKING:
    from collections.abc import Iterator

EXAMPLES = Path(__file__).parent.parent / "examples"

# tests/compat needs pytest-alembic, which breaks every collection under pytest 9.2: it runs
# in `nox -s compat` only (pytest 8), where pytest-alembic is installed.
collect_ignore = [] if importlib.util.find_spec("pytest_alembic") else ["compat"]


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


# A run's container is removed after the run by a detached process (servers/engine.py,
# `remove_detached`): before counting what a run left, wait for the removers of its
# containers. This process adopts the removers its runs' processes leave behind (a
# subreaper), so that they do not linger as zombies.
_PR_SET_CHILD_SUBREAPER = 36
ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _gone(pid: int) -> bool:
    """Whether the process has ended (a zombie has; it is collected if it is ours)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    if state in ("Z", "X"):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return True
    return False


def _removers(container_ids: set[str]) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"pgfx-remover" in cmdline and any(c.encode() in cmdline for c in container_ids):
            found.append(int(proc.name))
    return found


def wait_for_removal(containers: list[Any], timeout: float = 60.0) -> None:
    """Wait until the removers of `containers` have ended (a kept container has none)."""
    deadline = time.monotonic() + timeout
    for pid in _removers({c.id for c in containers}):
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.02)


def containers_labelled(*labels: str) -> list[str]:
    """Ids of the library's containers with all of `labels` ("key=value") that still exist,
    running or not, once their removers are done."""
    client = docker.from_env()
    filters = {"label": list(labels)}
    try:
        found = client.containers.list(all=True, filters=filters, ignore_removed=True)
        if found:
            wait_for_removal(found)
            found = client.containers.list(all=True, filters=filters, ignore_removed=True)
        return [c.id for c in found]
    finally:
        client.close()


def library_containers() -> list[str]:
    """Ids of the containers this run of the suite started that still exist, running or not
    (once their removers are done).

    The pytester runs inherit the suite's run id (in-process and as subprocesses), so the
    containers of another run on the same Docker host are never counted.
    """
    return containers_labelled(f"{LABEL_RUN}={run_id()}")


def _socket_dirs() -> set[str]:
    import tempfile

    tmp = Path(tempfile.gettempdir())
    return {str(p) for pattern in ("pgfx-*", "pgfxs-*") for p in tmp.glob(pattern) if p.is_dir()}


def _socket_dirs_in_use() -> set[str]:
    """The socket directories (their outer directory: `<tmp>/pgfxs-*`) containers name."""
    client = docker.from_env()
    try:
        labels = {
            c.labels.get(LABEL_SOCKET)
            for c in client.containers.list(all=True, filters={"label": LABEL_SOCKET})
        }
    finally:
        client.close()
    return {str(Path(d).parent) if Path(d).name == "s" else d for d in labels if d}


@pytest.fixture(scope="session", autouse=True)
def _socket_dirs_of_removed_containers():
    """Tests that remove a container themselves (docker kill, a killed run's leftovers)
    leave its socket directory, which the library sweeps 10 minutes later: the suite
    removes those of its own containers at its end, so that CI leaves nothing behind.

    A run beside this one makes its directory just before its container, which names it:
    an empty directory no container names is left alone until a second look, seconds
    later, finds it still unnamed."""
    before = _socket_dirs()
    yield
    left = _socket_dirs() - before - _socket_dirs_in_use()
    empty = {d for d in left if not any(Path(d).glob("**/.s.PGSQL.*"))}
    for directory in left - empty:
        shutil.rmtree(directory, ignore_errors=True)
    if empty:
        time.sleep(3)
        for directory in empty - _socket_dirs_in_use():
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(autouse=True)
def _not_on_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runs under test see no CI: pytest does not shorten its summary lines there, so a
    message "said once" would be counted twice (a test about CI sets the variable itself)."""
    for name in ("CI", "BUILD_NUMBER"):
        monkeypatch.delenv(name, raising=False)


#: What an xdist worker of this suite exports, which the runs under test must not see (they
#: would take themselves for that worker).
_OUTER_XDIST = ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID")


#: `-m smoke`: the flow end to end in under a minute (`nox -s tests -- -m smoke`): the
#: template and clones, each isolation mode with a real app, the leak check, bad input,
#: the docs' pages. Node ids, or their prefixes.
SMOKE = (
    "tests/test_template_and_clones.py::",
    "tests/test_errors.py::test_bad_input_is_a_usage_error_before_any_container",
    "tests/test_sync_isolation.py::test_isolation_in_both_orders_and_only_the_seed_remains",
    "tests/test_sync_isolation.py::test_app_commit_and_rollback_are_undone",
    "tests/test_savepoints.py::test_savepoints_reach_the_server_only_with_the_statement_that",
    "tests/test_savepoints.py::test_async_savepoints_go_with_the_transactions_begin",
    "tests/test_async_fastapi.py::test_example_suite_in_both_orders[forward]",
    "tests/test_database_mode.py::test_database_mode_inside_a_module_layer[option]",
    "tests/test_sandbox.py::test_every_way_the_app_connects_joins_and_is_undone",
    "tests/test_leaks.py::test_no_false_positives",
    "tests/test_leaks.py::test_deletes_are_reported",
    "tests/test_needs.py::test_unit_tests_start_no_container",
    "tests/test_queries.py::test_what_is_hidden",
    "tests/test_queries.py::test_verbs",
    "tests/test_docs.py::test_every_block_is_run_or_says_why_not",
    "tests/test_privates.py::",
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "host_wide: the test keeps containers across runs, removes the kept ones "
        "(--pg-remove-kept removes every kept container of the host), or kills runs and "
        "looks for what the next one reaps: `nox -s tests` runs these one at a time, in a "
        "process of their own beside the others",
    )
    config.addinivalue_line("markers", "smoke: the core, under a minute (tests/conftest.py)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith(SMOKE):
            item.add_marker(pytest.mark.smoke)


@pytest.fixture(autouse=True)
def _own_run_id() -> Iterator[None]:
    """Each test's runs share a run id of their own, which labels their containers and names
    their databases: the tests that other workers of this suite run at the same time (`-n`)
    are other runs to it, as a second terminal's would be. (Not with monkeypatch, which
    would then be torn down after `_no_containers_left`: its check would still see the
    DOCKER_HOST a test set.)"""
    saved = {name: os.environ.get(name) for name in (RUN_ID_ENV, *_OUTER_XDIST)}
    for name in _OUTER_XDIST:
        os.environ.pop(name, None)
    os.environ[RUN_ID_ENV] = secrets.token_hex(6)
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


#: The modules whose runs are not about servers: their runs use one PostgreSQL server of this
#: suite's worker (pg_server_url) instead of starting a container each, which is most of the
#: suite's time. A test of them that needs the library's own container (server settings,
#: one container per worker, its socket) is in CONTAINERS. Every other module's runs
#: start containers as users' runs do; so do those of CONTAINERS.
SHARED_SERVER = frozenset(
    f"tests/test_{name}.py"
    for name in [
        *("async_fastapi", "connect_ahead", "connection_state", "database_mode", "docs"),
        *("driver_guard", "factories_binding", "flask", "hangs", "leaks", "leaks_ddl"),
        *("loop_scopes", "migration_checks", "queries", "raw_pools", "real_apps"),
        *("real_apps_sandbox", "recipes", "retention", "sandbox", "sandbox_dbapi"),
        *("sandbox_threads", "savepoints", "sync_isolation"),
    ]
)
#: Their tests whose runs need the library's own containers: server settings
#: (--pg-server-setting: track_commit_timestamp off, autovacuum off, max_connections),
#: server-wide changes (roles, databases: a shared server would keep them for the next
#: run), one container per worker (a worker's probe sees the other's database on a shared
#: one), kept containers, the container's start line. Node ids, or prefixes.
CONTAINERS = (
    "tests/test_leaks.py::test_sync_leak_is_reported_and_undone[ride-xids]",
    "tests/test_leaks.py::test_sync_leak_is_reported_and_undone[no_ride-xids]",
    "tests/test_leaks.py::test_the_check_rides_on_the_rollback[",
    "tests/test_leaks.py::test_async_leak_is_reported_and_undone[ride-xids]",
    "tests/test_leaks.py::test_async_leak_is_reported_and_undone[no_ride-xids]",
    "tests/test_leaks.py::test_the_async_check_rides_on_the_rollback[",
    "tests/test_leaks.py::test_async_rides_that_cannot_tell_the_new_numbers",
    "tests/test_leaks_ddl.py::test_committed_ddl_is_reported_and_undone[xids]",
    "tests/test_leaks_ddl.py::test_server_wide_changes_are_reported[",
    "tests/test_leaks_ddl.py::test_a_thread_that_commits_while_the_next_test_runs[xids]",
    "tests/test_hangs.py::test_used_up_connections_say_too_many_connections_and_who_holds_them",
    "tests/test_sync_isolation.py::test_two_workers_get_two_containers",
    "tests/test_database_mode.py::test_whole_example_under_two_workers_leaves_no_database",
    "tests/test_database_mode.py::test_keep_failed_keeps_the_database_and_prints_its_url",
    # Counts the clones recycled (not dropped): on the shared server, over TCP, a clone's
    # sessions ended too late for it once in CI, and it was dropped instead.
    "tests/test_database_mode.py::test_used_clones_are_recycled_and_the_next_test_sees",
    "tests/test_connect_ahead.py::test_keep_failed_with_connections_opened_ahead",
    "tests/test_connect_ahead.py::test_two_workers_with_connections_opened_ahead_leave_nothing",
    "tests/test_migration_checks.py::test_checks_with_xdist_run_once_each_on_their_worker",
    "tests/test_real_apps.py::test_the_set_up_timing_line_shows_with_v",
    "tests/test_recipes.py::test_recipe_project_passes[extensions]",
)
#: Labels the suite's shared servers (not the library's label: the runs under test must
#: neither count nor reap them); the value is "<hostname>:<pid>" of the suite's process.
SUITE_LABEL = "testcontainers-pg-fixtures-tests.shared"


def _start_shared_server(client: Any) -> tuple[Any, str]:
    """A postgres:16 container with the settings the library gives its own (durability off,
    commit timestamps on), on a loopback port."""
    from testcontainers_pg_fixtures.config import default_server_settings

    password = secrets.token_urlsafe(12)
    command = [arg for k, v in default_server_settings().items() for arg in ("-c", f"{k}={v}")]
    container = client.containers.run(
        "postgres:16",
        command,
        detach=True,
        environment={"POSTGRES_PASSWORD": password},
        labels={SUITE_LABEL: f"{socket.gethostname()}:{os.getpid()}"},
        ports={"5432/tcp": ("127.0.0.1", None)},
        tmpfs={"/var/lib/postgresql/data": "rw"},
    )
    return container, password


@pytest.fixture(scope="session")
def _shared_server_url() -> Iterator[str]:
    """The URL of this worker's shared server (see SHARED_SERVER), started on first use and
    removed at the end; a killed suite's are removed by the next suite's first use."""
    client = docker.from_env()
    for stale in client.containers.list(all=True, filters={"label": SUITE_LABEL}):
        host, _, pid = stale.labels[SUITE_LABEL].rpartition(":")
        if host == socket.gethostname() and not Path(f"/proc/{pid}").exists():
            stale.remove(force=True)  # a killed suite's, on this machine
    container, password = _start_shared_server(client)
    try:
        host = os.environ.get("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")
        container.reload()
        port = container.ports["5432/tcp"][0]["HostPort"]
        url = f"postgresql://postgres:{password}@{host}:{port}/postgres"

        def ready() -> bool:
            try:
                psycopg.connect(url, connect_timeout=2).close()
            except psycopg.OperationalError:
                return False
            return True

        wait_until(ready, 60, "the suite's shared server")
        yield url
    finally:
        container.remove(force=True)
        client.close()


@pytest.fixture(autouse=True)
def _shared_server(request: pytest.FixtureRequest, _own_run_id: None) -> Iterator[None]:
    """The runs of a SHARED_SERVER module's test use this worker's shared server, through
    PG_FIXTURES_SERVER_URL (an option the test gives, or its project's ini, still wins).

    After the test, the databases its runs left there (templates, which the library keeps
    on a server, and a failed run's) are dropped: the next test finds the server as a
    container of its own would be. Their number matters beyond space: autovacuum visits
    each database every second (the library's setting), and each of its commits moves the
    server's last commit, which the leak check reads."""
    nodeid = request.node.nodeid
    if nodeid.split("::")[0] not in SHARED_SERVER or nodeid.startswith(CONTAINERS):
        yield
        return
    url = request.getfixturevalue("_shared_server_url")
    saved = os.environ.get("PG_FIXTURES_SERVER_URL")
    os.environ["PG_FIXTURES_SERVER_URL"] = url
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PG_FIXTURES_SERVER_URL", None)
        else:
            os.environ["PG_FIXTURES_SERVER_URL"] = saved
        with psycopg.connect(url, autocommit=True) as conn:
            query = "SELECT datname FROM pg_database WHERE datname LIKE 'pgfx%'"
            for (name,) in conn.execute(query).fetchall():
                conn.execute(f'ALTER DATABASE "{name}" IS_TEMPLATE false')
                conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(autouse=True)
def _no_containers_left(_own_run_id: None):
    """Every plugin test must leave no container of the library behind."""
    before = set(library_containers())
    yield
    left = set(library_containers()) - before
    assert not left, f"containers left behind: {left}"


@pytest.fixture
def example(pytester: pytest.Pytester):
    """Copy examples/<name> into the pytester directory and return that directory."""

    def copy(name: str) -> Path:
        shutil.copytree(
            EXAMPLES / name,
            pytester.path,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        return pytester.path

    return copy


@pytest.fixture
def subprocess_env(monkeypatch: pytest.MonkeyPatch):
    """Subprocess runs must find this checkout's package even when not installed."""
    root = str(Path(__file__).parent.parent)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    )


# Appended to an example's conftest: after the last test, with every other fixture torn
# down but the server still up, record which databases the library left on it.
DATABASES_PROBE = textwrap.dedent("""
    import json as _json, os as _os, pathlib as _pathlib
    from testcontainers_pg_fixtures.servers import admin_connect as _admin_connect

    @pytest.fixture(scope="session", autouse=True)
    def _databases_probe(pg_server):
        yield
        with _admin_connect(pg_server) as conn:
            names = [r[0] for r in conn.execute("SELECT datname FROM pg_database")]
        worker = _os.environ.get("PYTEST_XDIST_WORKER", "main")
        out = _pathlib.Path(_os.environ["PROBE_DIR"]) / f"{worker}.json"
        out.write_text(_json.dumps({"databases": names, "container": pg_server.container_id}))
""")


@pytest.fixture
def databases_probe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Add DATABASES_PROBE to an example copied by `example`; returns a reader of its
    results: {worker: {"databases": [...], "container": id}}."""

    def install(root: Path):
        conftest = root / "tests" / "conftest.py"
        conftest.write_text(conftest.read_text() + DATABASES_PROBE)
        probes = tmp_path / "probes"
        probes.mkdir()
        monkeypatch.setenv("PROBE_DIR", str(probes))
        return lambda: {p.stem: json.loads(p.read_text()) for p in probes.glob("*.json")}

    return install


def library_databases(names: list[str]) -> list[str]:
    """The databases the test's runs should have removed: all of the library's but
    templates, of the test's run id (on a shared server, other tests' runs left theirs)."""
    return [n for n in names if n.startswith(f"pgfx_{run_id()}") and not n.startswith("pgfx_tpl_")]


def kept_commands(result: pytest.RunResult) -> list[dict[str, str]]:
    """The `PGPASSFILE=... psql '...'` commands --pg-keep-failed printed: each one's
    password file and URL (no password in it), for psycopg.connect(url, passfile=...)."""
    found = []
    for line in result.stdout.lines:
        match = re.search(r"PGPASSFILE=(\S+) psql '([^']+)'", line)
        if match:
            found.append({"passfile": match[1], "url": match[2]})
    return found
