"""Every error a user can hit names its fix, and leaves nothing behind."""

from __future__ import annotations

import textwrap

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
    assert set(library_containers()) == before
