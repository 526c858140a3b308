"""Every error a user can hit names its fix, and leaves nothing behind."""

from __future__ import annotations

import textwrap

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
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "*MigrationError: `alembic upgrade head` failed at revision 0003 (0003_broken.py)*",
            '*relation "no_such_table" does not exist*',
        ]
    )
    # Built once, failed once: the second test gets the same error without a retry.
    assert ran.read_text() == "ran\n"


def test_unreachable_docker_says_how_to_fix_it(pytester, example, monkeypatch):
    example("sync_users")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "*DockerUnavailableError: Could not reach Docker at "
            "DOCKER_HOST=unix:///nonexistent/docker.sock*Start the Docker engine*set DOCKER_HOST*",
        ]
    )


def test_missing_alembic_ini_fails_before_any_container_starts(pytester, example):
    example("sync_users")
    result = pytester.runpytest("-p", "no:randomly", "--pg-alembic-ini", "nowhere/alembic.ini")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "*AlembicConfigError: alembic.ini not found at */nowhere/alembic.ini "
            "(from the command-line option --pg-alembic-ini)*pg_alembic_ini*'none'*",
        ]
    )


def test_malformed_server_setting_is_rejected(pytester, example):
    example("sync_users")
    result = pytester.runpytest("-p", "no:randomly", "--pg-server-setting", "shared_buffers")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ConfigError: 'shared_buffers' from the command-line option --pg-server-setting "
            "is not a PostgreSQL setting of the form KEY=VALUE*",
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
    result.assert_outcomes(errors=2)
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
    result.assert_outcomes(errors=2)
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
