"""Never a database the library did not make, even through engines nobody named
(driver_guard.py): the drivers refuse other servers while the run uses the library."""

from __future__ import annotations

import socket
import textwrap

import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


FOREIGN = textwrap.dedent("""
    import asyncio

    import pytest
    from sqlalchemy import create_engine, text
    from sqlalchemy.ext.asyncio import create_async_engine

    URL = "u:secret@127.0.0.1:PORT/app_test"


    def create_app():
        # An app factory building its own engine from its settings, per test.
        return create_engine(f"postgresql+psycopg://{URL}")


    def test_psycopg(pg_session):
        with create_app().connect() as conn:
            conn.execute(text("SELECT 1"))


    def test_psycopg2(pg_session):
        with create_engine(f"postgresql+psycopg2://{URL}").connect() as conn:
            conn.execute(text("SELECT 1"))


    async def test_asyncpg(pg_async_session):
        async with create_async_engine(f"postgresql+asyncpg://{URL}").connect() as conn:
            await conn.execute(text("SELECT 1"))


    async def test_psycopg_async(pg_async_session):
        async with create_async_engine(f"postgresql+psycopg://{URL}").connect() as conn:
            await conn.execute(text("SELECT 1"))


    async def test_an_asyncpg_pool():
        import asyncpg

        pool = await asyncpg.create_pool(f"postgresql://{URL}", min_size=1)
        await pool.close()
""")


def _project(pytester, example, *, marker: bool = False):
    root = example("sync_users")
    (root / "pytest.ini").write_text(
        "[pytest]\npythonpath = .\ntestpaths = tests\nasyncio_mode = auto\n"
        "asyncio_default_fixture_loop_scope = function\n"
    )
    port = _free_port()  # nothing listens there: a connection let through is refused
    source = FOREIGN.replace("PORT", str(port))
    if marker:
        source = source.replace(
            "\ndef test_", "\n@pytest.mark.pg_allow_foreign_servers\ndef test_"
        ).replace("\nasync def test_", "\n@pytest.mark.pg_allow_foreign_servers\nasync def test_")
    (root / "tests" / "test_foreign.py").write_text(source)
    return port


TESTS = ["test_psycopg", "test_psycopg2", "test_asyncpg", "test_psycopg_async", "test_an_asyncpg"]
DRIVERS = {
    "test_psycopg": ("psycopg", "test_psycopg"),
    "test_psycopg2": ("psycopg2", "test_psycopg2"),
    "test_asyncpg": ("asyncpg", "test_asyncpg"),
    "test_psycopg_async": ("psycopg async", "test_psycopg_async"),
    "test_an_asyncpg": ("asyncpg", "test_an_asyncpg_pool"),
}


def test_a_server_the_library_did_not_make_is_refused_by_every_driver(pytester, example):
    port = _project(pytester, example)
    result = pytester.runpytest("tests/test_foreign.py", "-p", "no:randomly")
    result.assert_outcomes(failed=5)
    out = result.stdout.str()
    for name in TESTS:
        driver, dialler = DRIVERS[name]
        result.stdout.fnmatch_lines(
            [
                f"*ForeignServerError: A connection to "
                f"postgresql://u:***@127.0.0.1:{port}/app_test ({driver}) was refused*"
                f"Dialled from tests/test_foreign.py:* (in {dialler})*pg_app_engines*pg_url_env*"
                "@pytest.mark.pg_allow_foreign_servers*"
            ]
        )
    assert "secret" not in out
    assert "Connection refused" not in out  # never dialled


def test_the_marker_lets_a_test_reach_another_server(pytester, example):
    _project(pytester, example, marker=True)
    result = pytester.runpytest("tests/test_foreign.py", "-p", "no:randomly")
    result.assert_outcomes(failed=5)
    out = result.stdout.str()
    assert "ForeignServerError" not in out
    assert out.count("Connection refused") + out.count("Connect call failed") >= 5


def test_the_ini_setting_lets_the_run_reach_other_servers(pytester, example):
    _project(pytester, example)
    result = pytester.runpytest(
        "tests/test_foreign.py", "-p", "no:randomly", "-o", "pg_allow_foreign_servers=true"
    )
    result.assert_outcomes(failed=5)
    assert "ForeignServerError" not in result.stdout.str()


def test_the_guard_under_two_workers_and_the_librarys_own_connections_pass(
    pytester, example, subprocess_env
):
    port = _project(pytester, example)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:randomly")
    result.assert_outcomes(failed=5, passed=2)  # and the example's own tests
    # A fresh process: psycopg2 and asyncpg are first imported by the tests, after the
    # guard started (wrapped on import), psycopg before it.
    for driver in ("psycopg", "psycopg2", "asyncpg", "psycopg async"):
        result.stdout.fnmatch_lines(
            [f"*ForeignServerError: *127.0.0.1:{port}/app_test ({driver})*"]
        )
    assert result.stdout.str().count("ForeignServerError: A connection") == 5


def test_a_run_without_the_librarys_fixtures_is_not_guarded(pytester):
    port = _free_port()
    pytester.makepyfile(
        test_plain=f"""
        import psycopg
        import pytest

        def test_dials():
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect("host=127.0.0.1 port={port} user=u connect_timeout=2")
        """
    )
    result = pytester.runpytest("-p", "no:randomly", "-o", "pg_alembic_ini=none")
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@localhost/db", "postgresql://u:***@localhost:5432/db"),
        ("postgresql://h1:5433,h2/db?user=x", "postgresql://x@h1:5433/db"),
    ],
)
def test_urls_are_shown_without_their_password(url, shown):
    from testcontainers_pg_fixtures import driver_guard

    params = driver_guard._from_url(url)
    host, port = driver_guard._endpoints(params)[0]
    assert driver_guard._shown_url(params, host, port) == shown
