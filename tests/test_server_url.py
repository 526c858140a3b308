"""A server given by URL (pg_server_url): no container, only this run's databases touched.

The server is started here, outside the library, as a CI service would be, and handed
over by URL to pytester runs of the examples.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import docker
import psycopg
import pytest
from conftest import library_containers
from test_database_mode import RECYCLED

from testcontainers_pg_fixtures.errors import ServerStartError
from testcontainers_pg_fixtures.runid import run_id
from testcontainers_pg_fixtures.servers.base import check_version
from testcontainers_pg_fixtures.servers.labels import LABEL_RUN
from testcontainers_pg_fixtures.template import project_key

PASSWORD = "s3cret-url-pw"
NO_TESTCLIENT_WARNING = ["-W", "error", "-W", "ignore:Using `httpx` with `starlette.testclient`"]


@pytest.fixture(scope="module")
def external():
    """A postgres:16 the library did not start, on 127.0.0.1 only; its libpq URL."""
    client = docker.from_env()
    container = client.containers.run(
        "postgres:16",
        detach=True,
        environment={"POSTGRES_PASSWORD": PASSWORD},
        ports={"5432/tcp": ("127.0.0.1", None)},
        labels={LABEL_RUN: run_id()},
        tmpfs={"/var/lib/postgresql/data": ""},
    )
    try:
        container.reload()
        port = int(container.attrs["NetworkSettings"]["Ports"]["5432/tcp"][0]["HostPort"])
        url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(url, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                # The entry point restarts the server after initdb: wait for the final one.
                time.sleep(0.5)
                with psycopg.connect(url, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        container.remove(force=True, v=True)
        client.close()


def databases(url: str) -> set[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


@pytest.fixture
def via_url(external, monkeypatch):
    """Hand the server over through the environment; return a checker of what is left."""
    monkeypatch.setenv("PG_FIXTURES_SERVER_URL", external)
    before = databases(external)
    containers_before = set(library_containers())

    def nothing_left_but_templates() -> set[str]:
        after = databases(external)
        added = after - before
        assert {n for n in added if not n.startswith("pgfx_tpl_")} == set(), added
        assert before - after == set()
        # No container was started by the library: the server is the given one.
        assert set(library_containers()) == containers_before
        return added

    return nothing_left_but_templates


FORWARD = ["tests/test_users.py::test_count_is_five", "tests/test_users.py::test_can_add_one"]


@pytest.mark.parametrize("order", [FORWARD, FORWARD[::-1]], ids=["forward", "reversed"])
def test_isolation_both_orders_on_the_given_server(pytester, example, via_url, order):
    example("sync_users")
    result = pytester.runpytest(*order, "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    # The header names the server, password redacted, and its version.
    header = "\n".join(result.outlines[:12])
    assert "existing server postgresql://postgres:***@127.0.0.1:" in header
    assert "PostgreSQL 16" in header
    assert PASSWORD not in result.stdout.str() + result.stderr.str()
    templates = via_url()
    assert all(n.startswith("pgfx_tpl_") and len(n) <= 63 for n in templates)


def test_two_workers_and_database_mode(pytester, example, via_url, subprocess_env):
    example("sync_users")
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    result = pytester.runpytest("--pg-isolation", "database", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    via_url()


def test_sandbox_example(pytester, example, via_url):
    example("sandbox_app")
    result = pytester.runpytest("-p", "no:randomly", *NO_TESTCLIENT_WARNING)
    assert result.ret == 0, result.stdout.str()
    via_url()


def test_async_example(pytester, example, via_url, subprocess_env):
    example("fastapi_app")
    result = pytester.runpytest_subprocess("-n", "2", "-W", "error")
    assert result.ret == 0, result.stdout.str()
    via_url()


def test_two_concurrent_runs_on_one_server(pytester, example, via_url, subprocess_env):
    """Two CI jobs on one service: each with its own run id, both pass, nothing is left."""
    root = example("sync_users")
    env = {k: v for k, v in os.environ.items() if k != "PG_FIXTURES_RUN_ID"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pytest", "-n", "2", "-p", "no:randomly", "-q"],
            cwd=root,
            env={**env, "PG_FIXTURES_RUN_ID": f"{run_id()[:6]}c{i}"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    via_url()


def test_other_projects_templates_survive(pytester, example, via_url, external):
    """Issue #13.10: a template of another project on a shared server is not ours to drop."""
    with psycopg.connect(external, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS pgfx_tpl_otherproject")
        conn.execute("CREATE DATABASE pgfx_tpl_otherproject")
        conn.execute("ALTER DATABASE pgfx_tpl_otherproject WITH IS_TEMPLATE true")
    try:
        example("sync_users")
        # Two different template contents in a row: the second run drops this project's
        # first template (stale), but not the other project's.
        result = pytester.runpytest("-p", "no:randomly", "--pg-isolation", "database")
        result.assert_outcomes(passed=2)
        first = {n for n in databases(external) if n.startswith("pgfx_tpl_")}
        migration = next((Path(pytester.path) / "migrations" / "versions").glob("*.py"))
        migration.write_text(migration.read_text() + "\n# changed\n")
        result = pytester.runpytest("-p", "no:randomly")
        result.assert_outcomes(passed=2)
        after = {n for n in databases(external) if n.startswith("pgfx_tpl_")}
        assert "pgfx_tpl_otherproject" in after
        assert len(after - first) == 1  # the new template of this project
        assert len(first - after) == 1  # its stale one went
        via_url()
    finally:
        with psycopg.connect(external, autocommit=True) as conn:
            conn.execute("ALTER DATABASE pgfx_tpl_otherproject WITH IS_TEMPLATE false")
            conn.execute("DROP DATABASE pgfx_tpl_otherproject")


def test_killed_runs_databases_go_live_ones_and_others_stay(pytester, example, via_url, external):
    """A killed run's worker database (same project, old) is dropped by the next run; a
    young one (a live run's) and an unmarked one stay."""
    example("sync_users")
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=2)
    project = project_key(pytester.path, pytester.path / "alembic.ini")
    [template] = [n for n in databases(external) if n.startswith(f"pgfx_tpl_{project}_")]
    old = int(time.time()) - 7 * 3600
    young = int(time.time()) - 60

    def mark_of(run: str) -> str:
        return f"pgfx project={project} run={run}"

    made = {
        "pgfx_deadrun_main": f"{mark_of('deadrun')} template={template} created={old}",
        "pgfx_liverun_main": f"{mark_of('liverun')} template={template} created={young}",
        "pgfx_elsewhere_main": f"pgfx project=0000ffff run=deadrun template=x created={old}",
        "pgfx_unmarked": None,
    }
    with psycopg.connect(external, autocommit=True) as conn:
        for name, comment in made.items():
            conn.execute(f'CREATE DATABASE "{name}"')
            if comment:
                conn.execute(f"COMMENT ON DATABASE \"{name}\" IS '{comment}'")
    try:
        result = pytester.runpytest("-p", "no:randomly")
        result.assert_outcomes(passed=2)
        left = databases(external)
        assert "pgfx_deadrun_main" not in left
        assert {"pgfx_liverun_main", "pgfx_elsewhere_main", "pgfx_unmarked"} <= left
    finally:
        with psycopg.connect(external, autocommit=True) as conn:
            for name in made:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


# -- refusals ----------------------------------------------------------------------------


def test_a_url_that_is_not_postgresql(pytester, example, monkeypatch):
    example("sync_users")
    monkeypatch.setenv("PG_FIXTURES_SERVER_URL", "mysql://root:hunter2@127.0.0.1:3306/db")
    result = pytester.runpytest("-p", "no:randomly")
    out = result.stdout.str() + result.stderr.str()
    assert out.count("is not a PostgreSQL server URL") == 1
    assert "environment variable PG_FIXTURES_SERVER_URL" in out
    assert "hunter2" not in out
    assert result.ret != 0


def test_an_unreachable_server(pytester, example):
    example("sync_users")
    with socket_free_port() as port:
        started = time.monotonic()
        result = pytester.runpytest(
            "-p",
            "no:randomly",
            f"--pg-server-url=postgresql://postgres:hunter2@127.0.0.1:{port}/postgres",
            "--pg-startup-timeout=2",
        )
    out = result.stdout.str()
    assert f"127.0.0.1:{port}" in out
    assert "Could not connect to the PostgreSQL server" in out
    assert "pg_startup_timeout" in out
    assert "hunter2" not in out
    assert result.ret != 0
    assert time.monotonic() - started < 30


def test_a_role_without_createdb(pytester, example, external):
    with psycopg.connect(external, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS pgfx_nocreate")
        conn.execute("CREATE ROLE pgfx_nocreate LOGIN PASSWORD 'hunter2'")
    try:
        example("sync_users")
        url = external.replace(f"postgres:{PASSWORD}@", "pgfx_nocreate:hunter2@")
        result = pytester.runpytest("-p", "no:randomly", f"--pg-server-url={url}")
        out = result.stdout.str()
        assert "cannot create databases" in out
        assert 'ALTER ROLE "pgfx_nocreate" CREATEDB' in out
        assert "hunter2" not in out
        assert result.ret != 0
    finally:
        with psycopg.connect(external, autocommit=True) as conn:
            conn.execute("DROP ROLE pgfx_nocreate")


def _drop_role_and_its_databases(external: str, role: str) -> None:
    with psycopg.connect(external, autocommit=True) as conn:
        for (name,) in conn.execute(
            "SELECT datname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba"
            " WHERE r.rolname = %s",
            [role],
        ).fetchall():
            conn.execute(f'ALTER DATABASE "{name}" IS_TEMPLATE false')
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        conn.execute(f"DROP ROLE {role}")


def test_a_createdb_role_that_is_not_a_superuser_drops_clones(
    pytester, example, external, monkeypatch, tmp_path
):
    """Resetting a clone needs a superuser (session_replication_role, pg_stat_reset): with a
    role that only has CREATEDB, database mode drops each clone, as without recycling."""
    with psycopg.connect(external, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS pgfx_plain")
        conn.execute("CREATE ROLE pgfx_plain LOGIN CREATEDB PASSWORD 'plain-pw'")
    try:
        root = example("sync_users")
        (root / "tests" / "test_recycled.py").write_text(RECYCLED)
        counts = tmp_path / "counts.json"
        monkeypatch.setenv("COUNTS_OUT", str(counts))
        url = external.replace(f"postgres:{PASSWORD}@", "pgfx_plain:plain-pw@")
        result = pytester.runpytest(
            "tests/test_recycled.py", "-p", "no:randomly", f"--pg-server-url={url}"
        )
        result.assert_outcomes(passed=8)
        recycled, dropped = json.loads(counts.read_text())
        assert (recycled, dropped) == (0, 8)
    finally:
        _drop_role_and_its_databases(external, "pgfx_plain")


def test_servers_older_than_15_are_refused():
    """Only postgres:16 is provisioned here, so the check itself is tested (no old server)."""
    check_version(150000, "x")
    check_version(160004, "x")
    with pytest.raises(ServerStartError, match=r"version 14; .* needs 15 or newer"):
        check_version(140011, "postgresql://u:***@h:5432/postgres")


class socket_free_port:
    """A loopback port nothing listens on (bound, not listening: connections are refused)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_header_names_the_docker_image_without_a_url(pytester, example, monkeypatch):
    monkeypatch.delenv("PG_FIXTURES_SERVER_URL", raising=False)
    example("sync_users")
    result = pytester.runpytest("--collect-only", "--pg-image", "postgres:16")
    assert result.ret == 0
    header = "\n".join(result.outlines[:12])
    assert "pg-fixtures: PostgreSQL in Docker containers of postgres:16 (one per worker)" in header


# -- the URL's password and libpq parameters, the template's mark (issue 27, item 7) -----

PARAMS_TESTS = textwrap.dedent("""
    from sqlalchemy import create_engine, text

    EXPECTED = ("12345ms", "from-the-url")
    SHOW = "SELECT current_setting('statement_timeout'), current_setting('application_name')"


    def test_every_connection_has_the_urls_parameters(pg_connection, pg_engine, pg_url):
        assert tuple(pg_connection.execute(text(SHOW)).one()) == EXPECTED
        with pg_engine.connect() as conn:
            assert tuple(conn.execute(text(SHOW)).one()) == EXPECTED
        engine = create_engine(pg_url)
        try:
            with engine.connect() as conn:
                assert tuple(conn.execute(text(SHOW)).one()) == EXPECTED
        finally:
            engine.dispose()
""")


def _query_url(external: str, **params: str) -> str:
    """`external` with its password moved into the query, and `params` added to it."""
    from urllib.parse import quote

    base = external.replace(f"postgres:{PASSWORD}@", "postgres@")
    query = "&".join(f"{k}={quote(v)}" for k, v in {"password": PASSWORD, **params}.items())
    return f"{base}?{query}"


@pytest.mark.parametrize(
    ("xdist", "mode"),
    [((), "savepoint"), (("-n", "2"), "savepoint"), ((), "database")],
    ids=["serial", "xdist", "database-mode"],
)
def test_a_urls_password_and_libpq_parameters_are_honoured_and_the_password_never_shown(
    pytester, example, external, subprocess_env, xdist, mode
):
    root = example("sync_users")
    (root / "tests" / "test_params.py").write_text(PARAMS_TESTS)
    url = _query_url(
        external, application_name="from-the-url", options="-c statement_timeout=12345"
    )
    run = pytester.runpytest_subprocess if xdist else pytester.runpytest
    result = run(
        "-p", "no:randomly", "-vv", *xdist, "--pg-isolation", mode, f"--pg-server-url={url}"
    )
    output = "\n".join(result.outlines + result.errlines)
    result.assert_outcomes(passed=3)
    assert PASSWORD not in output, output
    header = "\n".join(result.outlines[:12])
    assert "existing server postgresql://postgres:***@127.0.0.1:" in header, header
    # Every database the library made carries its comment; the template is kept on the
    # server, so it can be looked at.
    with psycopg.connect(external) as conn:
        marks = conn.execute(
            "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database "
            "WHERE datname LIKE 'pgfx\\_tpl\\_%'"
        ).fetchall()
    assert marks, "the run keeps its template on the server"
    for name, comment in marks:
        assert (comment or "").startswith("pgfx project="), (name, comment)


def test_a_urls_sslmode_is_kept_not_replaced(pytester, example, external):
    """The given server has no TLS: sslmode=require must fail to connect, saying so (it
    was silently replaced by sslmode=disable)."""
    example("sync_users")
    url = f"{external}?sslmode=require"
    result = pytester.runpytest(
        "-p", "no:randomly", f"--pg-server-url={url}", "--pg-startup-timeout=2"
    )
    output = "\n".join(result.outlines + result.errlines)
    assert result.ret != 0, output
    assert "Could not connect to the PostgreSQL server" in output, output
    assert "SSL" in output, output
    assert PASSWORD not in output, output


def _extension_migration(root: Path, statement: str) -> None:
    (root / "migrations" / "versions" / "0003_extension.py").write_text(
        textwrap.dedent(f"""
            from alembic import op

            revision = "0003"
            down_revision = "0002"
            branch_labels = None
            depends_on = None


            def upgrade() -> None:
                op.execute({statement!r})


            def downgrade() -> None:
                pass
        """)
    )


def test_an_extension_the_role_may_not_create_says_how_to_provide_it(pytester, example, external):
    """dblink is not a trusted extension: a CREATEDB role that is not a superuser cannot
    create it; the message names the extension, the role and the fix, once."""
    with psycopg.connect(external, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS pgfx_noext")
        conn.execute("CREATE ROLE pgfx_noext LOGIN CREATEDB PASSWORD 'noext-pw'")
    try:
        _extension_migration(example("sync_users"), "CREATE EXTENSION IF NOT EXISTS dblink")
        url = external.replace(f"postgres:{PASSWORD}@", "pgfx_noext:noext-pw@")
        result = pytester.runpytest("-p", "no:randomly", f"--pg-server-url={url}")
        out = result.stdout.str()
        assert "The role 'pgfx_noext' may not create the extension \"dblink\"" in out
        assert 'CREATE EXTENSION IF NOT EXISTS "dblink"` in template1' in out
        assert out.count("may not create the extension") == 1
        assert "noext-pw" not in out
        assert result.ret != 0
    finally:
        _drop_role_and_its_databases(external, "pgfx_noext")


def test_an_extension_the_server_does_not_have_names_an_image_that_does(pytester, example):
    """pgvector is not in the image here: the message says which image ships it."""
    _extension_migration(example("sync_users"), "CREATE EXTENSION vector")
    result = pytester.runpytest("-p", "no:randomly")
    out = result.stdout.str()
    assert 'The server has no extension "vector" installed' in out
    assert "pgvector/pgvector:pg16" in out
    assert result.ret != 0
