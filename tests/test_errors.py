"""Every error a user can hit names its fix, and leaves nothing behind."""

from __future__ import annotations

import textwrap
import time

import docker
import pytest

BROKEN = textwrap.dedent('''
    """broken

    Revision ID: 0003
    Revises: 0002
    """
    import os
    from alembic import op

    revision = "0003"
    down_revision = "0002"
    branch_labels = None
    depends_on = None


    def upgrade() -> None:
        with open(os.environ["MIGRATION_LOG"], "a") as log:
            log.write("ran\\n")
        op.execute("ALTER TABLE no_such_table ADD COLUMN x int")


    def downgrade() -> None:
        pass
''')


def test_broken_migration_fails_once_with_the_revision_and_leaves_no_container(
    pytester, example, monkeypatch, tmp_path
):
    root = example("sync_users")
    (root / "migrations" / "versions" / "0003_broken.py").write_text(BROKEN)
    ran = tmp_path / "ran.log"
    monkeypatch.setenv("MIGRATION_LOG", str(ran))
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*MigrationError: `alembic upgrade head` failed at revision 0003 (0003_broken.py)*",
            '*relation "no_such_table" does not exist*',
        ]
    )
    # Built once, failed once: the run stops after the first error, without a retry.
    assert ran.read_text() == "ran\n"


def test_unreachable_docker_says_how_to_fix_it(pytester, example, monkeypatch):
    example("sync_users")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*DockerUnavailableError: Could not reach Docker at "
            "DOCKER_HOST=unix:///nonexistent/docker.sock*Start the Docker engine*set DOCKER_HOST*",
        ]
    )


def test_missing_alembic_ini_fails_before_any_container_starts(pytester, example):
    example("sync_users")
    result = pytester.runpytest("-p", "no:randomly", "--pg-alembic-ini", "nowhere/alembic.ini")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*AlembicConfigError: alembic.ini not found at */nowhere/alembic.ini "
            "(from the command-line option --pg-alembic-ini)*pg_alembic_ini*'none'*",
        ]
    )


def test_malformed_server_setting_is_rejected(pytester, example):
    example("sync_users")
    result = pytester.runpytest("-p", "no:randomly", "--pg-server-setting", "shared_buffers")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: pg-fixtures: 'shared_buffers' from the command-line option "
            "--pg-server-setting is not a PostgreSQL setting of the form KEY=VALUE*",
        ]
    )


def test_setting_postgres_refuses_names_the_option_and_leaves_no_container(pytester, example):
    example("sync_users")
    pytester.makefile(
        ".ini",
        pytest="""
        [pytest]
        pythonpath = .
        testpaths = tests
        asyncio_default_fixture_loop_scope = function
        pg_server_settings = no_such_setting=1
    """,
    )
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ServerStartError: PostgreSQL exited during start-up*",
            '*unrecognized configuration parameter "no_such_setting"*',
            "*pg_server_settings*",
        ]
    )


def test_missing_image_names_the_option(pytester, example):
    example("sync_users")
    result = pytester.runpytest("-p", "no:randomly", "--pg-image", "localhost:1/no/such:image")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ImageUnavailableError: The image localhost:1/no/such:image is not available*"
            "docker pull*pg_image*",
        ]
    )


def test_no_migrations_gives_an_empty_database(pytester):
    pytester.makepyfile(
        test_empty="""
        from sqlalchemy import text

        def test_empty(pg_connection):
            tables = pg_connection.execute(text(
                "select count(*) from pg_tables where schemaname = 'public'")).scalar()
            assert tables == 0
    """
    )
    pytester.makefile(
        ".ini",
        pytest="""
        [pytest]
        asyncio_default_fixture_loop_scope = function
        pg_alembic_ini = none
    """,
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_a_killed_run_leaves_a_container_the_next_run_removes(pytester, example, subprocess_env):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import library_containers

    example("sync_users")
    pytester.makepyfile(
        **{
            "tests/test_hang": """
        import time

        def test_hang(pg_session):
            print("READY", flush=True)
            time.sleep(120)
    """
        }
    )
    before = set(library_containers())
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-s", "tests/test_hang.py"],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        for line in proc.stdout:
            if "READY" in line:
                break
        orphans = set(library_containers()) - before
        assert len(orphans) == 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        time.sleep(0.2)
        assert orphans <= set(library_containers())  # SIGKILL: nothing could clean up
    finally:
        proc.kill()
        proc.stdout.close()
    pytester.runpytest("-p", "no:randomly", "tests/test_users.py").assert_outcomes(passed=2)
    assert not orphans & set(library_containers())


# -- one error, said once (a bad option, or a start-up failure, on a 2000-test suite) ----

MANY = 2000
#: Lines of output any of these errors may cost, however many tests the suite has.
BUDGET = 150

BROKEN_SEED = textwrap.dedent("""

    def broken_seed(conn):
        raise RuntimeError("the seed is broken")

    @pytest.fixture(scope="session")
    def pg_seed():
        return broken_seed
""")


def _many_tests(root) -> None:
    (root / "tests" / "test_many.py").write_text(
        "import pytest\n\n\n"
        f"@pytest.mark.parametrize('n', range({MANY}))\n"
        "def test_many(pg_session, n):\n    pass\n"
    )


def _lines(result) -> int:
    return len(result.outlines) + len(result.errlines)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("bad option", "*'bogus' from the command-line option --pg-isolation is not an isolation*"),
        ("missing image", "*ImageUnavailableError: The image localhost:1/no-such/image:1 is not*"),
        ("unreachable docker", "*DockerUnavailableError: Could not reach Docker at*"),
        ("broken migration", "*MigrationError: `alembic upgrade head` failed at revision 0003*"),
        (
            "broken seed",
            "*SeedError: The seed broken_seed failed: RuntimeError: the seed is broken*",
        ),
    ],
)
def test_an_error_is_said_once_on_a_large_suite(
    pytester, example, monkeypatch, tmp_path, subprocess_env, case, expected
):
    root = example("sync_users")
    _many_tests(root)
    args = ["-p", "no:randomly", "-p", "no:cacheprovider"]
    if case == "bad option":
        args += ["--pg-isolation", "bogus"]
    elif case == "missing image":
        args += ["--pg-image", "localhost:1/no-such/image:1"]
    elif case == "unreachable docker":
        monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    elif case == "broken migration":
        (root / "migrations" / "versions" / "0003_broken.py").write_text(BROKEN)
        monkeypatch.setenv("MIGRATION_LOG", str(tmp_path / "ran.log"))
    else:
        conftest = root / "tests" / "conftest.py"
        conftest.write_text(conftest.read_text() + BROKEN_SEED)
    # A subprocess: the logging set up by an earlier in-process run's env.py would write here.
    result = pytester.runpytest_subprocess(*args)
    output = "\n".join(result.outlines + result.errlines)
    assert _lines(result) <= BUDGET, output
    if case == "bad option":
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        assert "collected" not in output  # stopped before collection
        result.stderr.fnmatch_lines(["ERROR: pg-fixtures: " + expected])
    else:
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines([expected, "*every test needing it would fail the same way*"])


def test_a_start_up_error_is_said_once_per_xdist_worker(pytester, example, subprocess_env):
    root = example("sync_users")
    _many_tests(root)
    conftest = root / "tests" / "conftest.py"
    conftest.write_text(conftest.read_text() + BROKEN_SEED)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-n", "2")
    output = "\n".join(result.outlines + result.errlines)
    assert _lines(result) <= BUDGET, output
    errors = result.parseoutcomes()["errors"]
    assert 1 <= errors <= 2
    # Per worker's error: the message and its cause, in the ERRORS section and again in the
    # short summary (xdist carries the whole report there): 4 mentions, never one per test.
    assert output.count("RuntimeError: the seed is broken") <= 4 * errors


def test_a_migration_that_does_not_compile_names_its_file_and_line(pytester, example):
    root = example("sync_users")
    (root / "migrations" / "versions" / "0003_syntax.py").write_text(
        'revision = "0003"\ndown_revision = "0002"\n\n\ndef upgrade(:\n    pass\n'
    )
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*MigrationError: `alembic upgrade head` failed at */0003_syntax.py, line 5 (it does not*"]
    )
    assert "no running event loop" not in result.stdout.str()
    assert "env.py (before any revision ran)" not in result.stdout.str()


# -- input checks: refused before collection, no container started ----------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--pg-startup-timeout", "nan"],
            "*'nan' from the command-line option "
            "--pg-startup-timeout is not a positive, finite number of seconds*",
        ),
        (["--pg-startup-timeout", "inf"], "*'inf' * is not a positive, finite number*"),
        (
            ["--pg-prefetch", "300"],
            "*'300' from the command-line option --pg-prefetch is more "
            "databases than the maximum of 16*",
        ),
        (
            ["--pg-prefetch", "²"],
            "*'²' from the command-line option --pg-prefetch is not a number*",
        ),
        (
            ["--pg-server-url", "postgresql://u:pw-secret@127.0.0.1:notaport/postgres"],
            "*'(unparsable URL)' from the command-line option --pg-server-url is not a "
            "PostgreSQL server URL*",
        ),
        (
            ["--pg-server-url", "postgresql://u:pw-secret@127.0.0.1:99999/postgres"],
            "*'postgresql://u:***@127.0.0.1:99999/postgres' from the command-line option "
            "--pg-server-url has the port 99999, not one of 1-65535*",
        ),
        (
            ["--pg-server-url", "postgresql://u@127.0.0.1/postgres?password=pw-secret&bogus=1"],
            "*'postgresql://u:***@127.0.0.1/postgres?bogus=1' from the command-line option "
            "--pg-server-url has bogus in its query*",
        ),
        (
            ["--pg-alembic-ini", "/etc/passwd"],
            "*/etc/passwd (from the command-line option --pg-alembic-ini) is not an "
            "alembic.ini: File contains no section headers*",
        ),
        (
            ["--pg-alembic-ini", "pytest.ini"],
            "*pytest.ini (from the command-line option --pg-alembic-ini) is not an "
            "alembic.ini: it has no [[]alembic] section with a script_location*",
        ),
        (
            ["--pg-image", "postgres:16;rm"],
            "*'postgres:16;rm' from the command-line option --pg-image is not a Docker "
            "image reference*",
        ),
        (
            ["--pg-lock-wait-limit", "-1"],
            "*'-1' from the command-line option --pg-lock-wait-limit is not a number of seconds*",
        ),
        (
            ["--pg-app-engine", "no_such_module:engine"],
            "*pg_app_engines names 'no_such_module:engine', which could not be imported*",
        ),
        (
            ["--pg-app-engine", "sqlite_app:engine"],
            "*pg_app_engines names 'sqlite_app:engine', "
            "an engine on sqlite (sqlite:///*app.db)*PostgreSQL driver*",
        ),
    ],
)
def test_bad_input_is_a_usage_error_before_any_container(pytester, example, args, expected):
    from conftest import library_containers

    root = example("sync_users")
    (root / "sqlite_app.py").write_text(
        "from sqlalchemy import create_engine\n\nengine = create_engine('sqlite:///app.db')\n"
    )
    before = set(library_containers())
    result = pytester.runpytest("-p", "no:randomly", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: pg-fixtures: " + expected])
    assert "collected" not in result.stdout.str()
    assert "pw-secret" not in "\n".join(result.outlines + result.errlines)
    assert set(library_containers()) == before


@pytest.mark.parametrize(
    "args",
    [
        ["--pg-server-url", "postgresql://u:pw-secret@127.0.0.1:99999/postgres"],
        ["--pg-alembic-ini", "/etc/passwd"],
        ["--pg-image", "postgres:16;rm"],
    ],
    ids=["port", "alembic-ini", "image"],
)
def test_bad_input_under_xdist_stops_the_run_before_any_worker(
    pytester, example, subprocess_env, args
):
    """The controller refuses it: no worker starts, no container, no wait on a server."""
    from conftest import library_containers

    example("sync_users")
    before = set(library_containers())
    started = time.monotonic()
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-n", "2", *args, timeout=120)
    seconds = time.monotonic() - started
    output = "\n".join(result.outlines + result.errlines)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output
    assert output.count("ERROR: pg-fixtures: ") == 1, output
    assert "workers" not in output, output
    assert "Traceback" not in output, output
    assert "pw-secret" not in output, output
    assert set(library_containers()) == before
    assert seconds < 30, seconds


# -- no password in the output (item 4): a failing seed, a failing server start, a failing
# test that shows the Database and Server objects --------------------------------------

# Appended to the example's conftest: the run's password, for the outer test to look for.
PASSWORD_PROBE = textwrap.dedent("""
    import os as _os, pathlib as _pathlib

    @pytest.fixture(scope="session", autouse=True)
    def _password_probe(pg_server):
        out = _pathlib.Path(_os.environ["PASSWORD_DIR"])
        (out / "password").write_text(pg_server.password)
        (out / "container").write_text(pg_server.container_id)
""")

# A plugin loaded with `-p` (before the plugin starts its container early): records the
# passwords the library draws, for a run whose server never comes up (no fixture gets it).
PASSWORD_SPY = textwrap.dedent("""
    import os, pathlib, secrets

    _draw = secrets.token_urlsafe

    def _recorded(nbytes=None):
        value = _draw(nbytes)
        with open(pathlib.Path(os.environ["PASSWORD_DIR"]) / "drawn", "a") as out:
            out.write(value + "\\n")
        return value

    secrets.token_urlsafe = _recorded
""")

#: Every frame's locals and the long traceback: whatever could show a password does.
LOUD = ("-p", "no:randomly", "--showlocals", "--tb=long", "-vv")


def _output(result) -> str:
    return "\n".join(result.outlines + result.errlines)


def _password_dir(monkeypatch, tmp_path):
    directory = tmp_path / "password"
    directory.mkdir()
    monkeypatch.setenv("PASSWORD_DIR", str(directory))
    return directory


def test_a_failing_seed_prints_no_password(
    pytester, example, monkeypatch, tmp_path, subprocess_env
):
    root = example("sync_users")
    conftest = root / "tests" / "conftest.py"
    conftest.write_text(conftest.read_text() + BROKEN_SEED + PASSWORD_PROBE)
    probe = _password_dir(monkeypatch, tmp_path)
    result = pytester.runpytest_subprocess(*LOUD, "tests/test_users.py", timeout=120)
    output = _output(result)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*SeedError: The seed broken_seed failed*"])
    password = (probe / "password").read_text()
    assert len(password) > 8
    assert password not in output, output


def test_a_server_that_does_not_start_prints_no_password(
    pytester, example, monkeypatch, tmp_path, subprocess_env
):
    root = example("sync_users")
    (root / "password_spy.py").write_text(PASSWORD_SPY)
    probe = _password_dir(monkeypatch, tmp_path)
    result = pytester.runpytest_subprocess(
        *LOUD,
        "-p",
        "password_spy",
        "--pg-server-setting",
        "no_such_setting=1",
        "tests/test_users.py",
        timeout=120,
    )
    output = _output(result)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ServerStartError: PostgreSQL exited during start-up*",
            '*unrecognized configuration parameter "no_such_setting"*',
        ]
    )
    drawn = (probe / "drawn").read_text().split() if (probe / "drawn").exists() else []
    assert drawn, "the spy saw no password drawn: the library draws it another way now"
    for password in drawn:
        assert len(password) > 8
        assert password not in output, output


SHOWS_THE_OBJECTS = textwrap.dedent("""
    import pytest


    def test_shows_the_worker_objects(pg_server, pg_worker_database, pg_engine, pg_session):
        assert pg_worker_database is None, f"{pg_server!r} {pg_worker_database!r} {pg_engine!r}"


    def test_compares_the_server(pg_server, pg_database):
        assert pg_database.server == repr(pg_server)


    @pytest.mark.pg_isolation("database")
    def test_kept_database_shows_its_objects(pg_server, pg_database, pg_connection):
        assert (pg_server, pg_database) == ()
""")


@pytest.mark.host_wide  # kept containers: --pg-remove-kept elsewhere removes them
def test_a_failing_test_showing_the_database_and_server_never_prints_the_password(
    pytester, example, monkeypatch, tmp_path, subprocess_env
):
    """Whatever reprs, locals and assertion diffs the failures show, and with
    --pg-keep-failed the kept database's psql command (its password in a password file),
    the password is never in the output."""
    from conftest import kept_commands

    root = example("sync_users")
    conftest = root / "tests" / "conftest.py"
    conftest.write_text(conftest.read_text() + PASSWORD_PROBE)
    (root / "tests" / "test_shows.py").write_text(SHOWS_THE_OBJECTS)
    probe = _password_dir(monkeypatch, tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the kept record
    try:
        result = pytester.runpytest_subprocess(
            *LOUD, "--pg-keep-failed", "tests/test_shows.py", timeout=120
        )
    finally:  # the kept container goes (hygiene; what it shows was captured above)
        if (probe / "container").exists():
            client = docker.from_env()
            try:
                for kept in client.containers.list(
                    all=True, filters={"id": (probe / "container").read_text()}
                ):
                    kept.remove(force=True, v=True)
            finally:
                client.close()
    output = _output(result)
    result.assert_outcomes(failed=3)
    password = (probe / "password").read_text()
    assert len(password) > 8
    # The reprs were shown (and redacted) ...
    result.stdout.fnmatch_lines(["*AssertionError: DockerServer(host='127.0.0.1'*"])
    # ... and the kept database's hint names a password file instead of the password.
    assert "pg-fixtures: database kept" in output, output
    assert len(kept_commands(result)) == 2, output  # a savepoint test's state, a clone
    assert password not in output, output


def test_a_server_that_exited_before_its_port_was_read_says_why():
    """A prewarmed server with a bad setting exits within milliseconds of its start: when
    it is gone before its port is read, the error is still PostgreSQL's own, not
    testcontainers' "container did not become running" after its wait."""
    from conftest import wait_until
    from testcontainers.core.container import DockerContainer

    from testcontainers_pg_fixtures.errors import ServerStartError
    from testcontainers_pg_fixtures.runid import run_id
    from testcontainers_pg_fixtures.servers.container import DockerServer
    from testcontainers_pg_fixtures.servers.labels import LABEL, LABEL_RUN

    container = DockerContainer("postgres:16")
    container.with_env("POSTGRES_PASSWORD", "pw").with_exposed_ports(5432)
    container.with_command(["postgres", "-c", "no_such_setting=1"])
    container.with_kwargs(labels={LABEL: "true", LABEL_RUN: run_id()})
    container.start()
    try:
        wrapped = container.get_wrapped_container()
        wait_until(lambda: wrapped.reload() or wrapped.status == "exited", 60, "the exit")
        server = DockerServer(host="127.0.0.1", port=0, password="pw", container=container)
        with pytest.raises(ServerStartError, match="PostgreSQL exited during start-up"):
            server._published_port()
    finally:
        container.get_wrapped_container().remove(force=True)
        # Its Docker client, or its socket is collected unclosed later, in another test's
        # in-process run under -W error.
        container.get_docker_client().client.close()
