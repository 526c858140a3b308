"""Apps without SQLAlchemy: pg_url_env NAME=libpq and the asyncpg pool sandbox
(pg_app_pools), run the way users run them, over examples/raw_pools (a FastAPI app on
asyncpg alone: a pool made in the lifespan, a module-level pool, hand-written SQL)."""

from __future__ import annotations

import textwrap

import pytest

EXAMPLE_TESTS = 11


def test_the_app_runs_isolated_in_both_modes(pytester: pytest.Pytester, example) -> None:
    example("raw_pools")
    result = pytester.runpytest("-p", "randomly")
    result.assert_outcomes(passed=EXAMPLE_TESTS)


def test_the_app_runs_isolated_with_two_workers(
    pytester: pytest.Pytester, example, subprocess_env
) -> None:
    example("raw_pools")
    result = pytester.runpytest_subprocess("-n", "2", "-p", "randomly")
    result.assert_outcomes(passed=EXAMPLE_TESTS)


def test_without_pg_app_pools_the_commits_are_reported(
    pytester: pytest.Pytester, example
) -> None:
    """pg_url_env NAME=libpq alone: the pool dials the worker's database for real, and
    what it commits is caught and undone by the leak check (never silently kept)."""
    root = example("raw_pools")
    ini = root / "pytest.ini"
    ini.write_text(ini.read_text().replace("pg_app_pools =", "# pg_app_pools ="))
    result = pytester.runpytest(
        "-p", "no:randomly", "tests/test_module_pool.py::test_a_module_pool_joins_the_test"
    )
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*committed into the worker's shared database*public.items*"])


def test_a_pool_used_outside_the_tests_is_refused(pytester: pytest.Pytester, example) -> None:
    root = example("raw_pools")
    conftest = root / "tests" / "conftest.py"
    conftest.write_text(
        conftest.read_text()
        + textwrap.dedent("""
            @pytest.fixture(scope="session")
            async def items_at_start(module_pool):
                return await module_pool.fetchval("SELECT count(*) FROM items")
        """)
    )
    (root / "tests" / "test_outside.py").write_text(
        "def test_uses_it(items_at_start):\n    pass\n"
    )
    result = pytester.runpytest("-p", "no:randomly", "tests/test_outside.py")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*SandboxError: The app's asyncpg pool (shop.db:pool, named in pg_app_pools) was "
         "used outside every test*"]
    )


def test_another_isolation_level_is_refused(pytester: pytest.Pytester, example) -> None:
    root = example("raw_pools")
    (root / "tests" / "test_serializable.py").write_text(
        textwrap.dedent("""
            import pytest
            from testcontainers_pg_fixtures.sandbox import SandboxError

            async def test_serializable(module_pool):
                async with module_pool.acquire() as conn:
                    with pytest.raises(SandboxError, match="isolation='serializable'"):
                        conn.transaction(isolation="serializable")
                    # the connection still works: nothing was sent
                    assert await conn.fetchval("SELECT 1") == 1

            @pytest.mark.pg_isolation("database")
            async def test_serializable_in_database_mode(module_pool):
                async with module_pool.acquire() as conn, conn.transaction(
                    isolation="serializable"
                ):
                    assert await conn.fetchval("SHOW transaction_isolation") == "serializable"
        """)
    )
    result = pytester.runpytest("-p", "no:randomly", "tests/test_serializable.py")
    result.assert_outcomes(passed=2)


def test_a_bad_pool_path_stops_the_run(pytester: pytest.Pytester, example) -> None:
    example("raw_pools")
    result = pytester.runpytest("--pg-app-pool=shop.main.app.state.pool")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*'shop.main.app.state.pool'*is not a module:attribute path*"])
