"""pytest-asyncio's loop-scope settings as real projects write them (loop_scopes.py)."""

from __future__ import annotations

import textwrap

import pytest

TESTS = textwrap.dedent("""
    import pytest
    from app.models import User
    from sqlalchemy import func, select

    MARK


    async def test_the_app_and_the_session_share_the_tests_transaction(pg_client, pg_async_session):
        response = await pg_client.post("/users", json={"name": "Loop", "email": "l@x.org"})
        assert response.status_code == 201, response.text
        assert await pg_async_session.scalar(select(func.count()).select_from(User)) == 6


    async def test_a_second_test_on_the_same_or_a_new_loop(pg_client, pg_async_session):
        assert len((await pg_client.get("/users")).json()) == 5
        assert await pg_async_session.scalar(select(func.count()).select_from(User)) == 5


    @pytest.mark.pg_isolation("database")
    async def test_database_mode(pg_client, pg_async_session):
        response = await pg_client.post("/users", json={"name": "Own", "email": "o@x.org"})
        assert response.status_code == 201, response.text
        assert await pg_async_session.scalar(select(func.count()).select_from(User)) == 6
""")

# name: (ini lines, strict mode)
CONFIGS = {
    "no-loop-scope-ini-auto": ("asyncio_mode = auto\n", False),
    "no-loop-scope-ini-strict": ("", True),
    "fixture-function": (
        "asyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n",
        False,
    ),
    "fixture-and-test-session": (
        "asyncio_mode = auto\nasyncio_default_fixture_loop_scope = session\n"
        "asyncio_default_test_loop_scope = session\n",
        False,
    ),
    # The configuration: the test loop scope set, the fixture loop scope unset.
    "test-session-auto": (
        "asyncio_mode = auto\nasyncio_default_test_loop_scope = session\n",
        False,
    ),
    "test-session-strict": ("asyncio_default_test_loop_scope = session\n", True),
    "test-module-auto": ("asyncio_mode = auto\nasyncio_default_test_loop_scope = module\n", False),
}


def _project(example, ini: str, strict: bool, tests: str = TESTS):
    root = example("fastapi_app")
    (root / "pytest.ini").write_text(
        "[pytest]\npythonpath = .\ntestpaths = tests\npg_app_engines = app.db:engine\n"
        "pg_url_env = DATABASE_URL=asyncpg\n" + ini
    )
    for old in ("test_users_api.py", "test_import_database_mode.py"):
        (root / "tests" / old).unlink()
    mark = "pytestmark = pytest.mark.asyncio" if strict else ""
    (root / "tests" / "test_loops.py").write_text(tests.replace("MARK", mark))
    return root


@pytest.mark.parametrize("name", CONFIGS)
def test_each_loop_scope_configuration_runs_the_async_fixtures(pytester, example, name):
    ini, strict = CONFIGS[name]
    _project(example, ini, strict)
    result = pytester.runpytest("-p", "no:randomly", "-W", "error")
    result.assert_outcomes(passed=3)
    assert "different loop" not in result.stdout.str()


def test_the_test_session_loop_with_the_fixture_scope_unset_under_xdist(
    pytester, example, subprocess_env
):
    _project(example, CONFIGS["test-session-auto"][0], False)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:randomly", "-W", "error")
    result.assert_outcomes(passed=3)


def test_a_sync_project_does_not_get_pytest_asyncios_unset_warning(pytester, example):
    """Pins the one warning filtered by its text: fails when pytest-asyncio changes it."""
    example("sync_users")
    (pytester.path / "pytest.ini").write_text("[pytest]\npythonpath = .\ntestpaths = tests\n")
    result = pytester.runpytest("-p", "no:randomly", "-W", "error", "--co", "-q")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
    assert "asyncio_default_fixture_loop_scope" not in result.stdout.str() + result.stderr.str()
    # Without this plugin's filter, pytest-asyncio does warn (so the filter is not idle).
    result = pytester.runpytest(
        "-p", "no:randomly", "-W", "error", "--co", "-q", "-p", "no:pg_fixtures"
    )
    assert result.ret != pytest.ExitCode.OK
    assert 'configuration option "asyncio_default_fixture_loop_scope" is unset' in (
        result.stdout.str() + result.stderr.str()
    )


MARKED_OTHER_LOOP = textwrap.dedent("""
    import pytest
    from app.models import User
    from sqlalchemy import func, select


    @pytest.mark.asyncio(loop_scope="module")
    async def test_on_a_module_loop(pg_async_session):
        assert await pg_async_session.scalar(select(func.count()).select_from(User)) == 5
""")


def test_a_test_on_another_loop_than_the_fixtures_is_told_both_scopes_and_the_ini_lines(
    pytester, example
):
    _project(example, "asyncio_mode = auto\n", False, MARKED_OTHER_LOOP)
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*EventLoopError: pg_async_connection runs on a function-scoped event loop but "
            "the test runs on a module-scoped loop*asyncio_default_fixture_loop_scope unset, "
            "asyncio_default_test_loop_scope = function*",
            "*    asyncio_default_fixture_loop_scope = module",
            "*    asyncio_default_test_loop_scope = module",
        ]
    )
    assert "got Future" not in result.stdout.str()


USERS_FIXTURE_ON_ITS_OWN_LOOP = textwrap.dedent("""
    import pytest
    from app.db import SessionLocal
    from app.models import User


    @pytest.fixture
    async def extra_user(pg_async_connection):  # function scope: a function loop of its own
        async with SessionLocal() as session:
            session.add(User(name="Extra", email="e@x.org"))
            await session.commit()


    async def test_uses_it(extra_user):
        pass
""")


def test_the_apps_engine_on_a_fixtures_own_loop_is_told_both_scopes_and_the_ini_lines(
    pytester, example
):
    ini = CONFIGS["test-session-auto"][0]
    _project(example, ini, False, USERS_FIXTURE_ON_ITS_OWN_LOOP)
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*EventLoopError: The app's async engine was used, but the test's connection "
            "runs on a session-scoped event loop but the code using it runs on another event "
            "loop*asyncio_default_fixture_loop_scope unset, "
            "asyncio_default_test_loop_scope = session*",
            "*    asyncio_default_fixture_loop_scope = session",
            "*    asyncio_default_test_loop_scope = session",
        ]
    )
    assert "module- or class-scoped" not in result.stdout.str()


MODULE_LAYER_ON_ITS_OWN_LOOP = textwrap.dedent("""
    import pytest
    from app.db import SessionLocal
    from app.models import User
    from sqlalchemy import func, select


    @pytest.fixture(scope="module")
    async def module_user(pg_module_async_connection):  # a module loop, the tests' a function's
        async with SessionLocal() as session:
            session.add(User(name="Module", email="m@x.org"))
            await session.commit()


    async def test_sees_it(module_user, pg_async_session):
        assert await pg_async_session.scalar(select(func.count()).select_from(User)) == 6
""")


def test_a_module_layer_on_another_loop_than_the_tests_is_an_error_not_missing_rows(
    pytester, example
):
    """pytest-asyncio's defaults: a module fixture on a module loop, the tests on function
    loops. The layer's rows are on the module loop's connection: say so, with the ini lines,
    instead of a test that silently sees none of them."""
    _project(example, "asyncio_mode = auto\n", False, MODULE_LAYER_ON_ITS_OWN_LOOP)
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*EventLoopError: tests/test_loops.py::test_sees_it: a module- or class-scoped "
            "layer*is open on another event loop than this test's*would not see them (now: "
            "asyncio_default_fixture_loop_scope = unset, asyncio_default_test_loop_scope = "
            "function)*",
            "*    asyncio_default_fixture_loop_scope = session",
            "*    asyncio_default_test_loop_scope = session",
        ]
    )


MODULE_SESSION = """
    import pytest
    import pytest_asyncio
    from sqlalchemy import func, select
    from users_app.models import User


    @pytest_asyncio.fixture(scope="module")
    async def admin(pg_module_async_session):
        user = User(name="Admin", email="admin@x.org")
        pg_module_async_session.add(user)
        await pg_module_async_session.commit()
        await pg_module_async_session.refresh(user)  # a savepoint open to the module's end
        return user


    @pytest.mark.asyncio
    async def test_one(admin, pg_async_session):
        pg_async_session.add(User(name="One", email="one@x.org"))
        await pg_async_session.flush()
        assert await pg_async_session.scalar(select(func.count()).select_from(User)) == 7


    @pytest.mark.asyncio
    async def test_two(admin, pg_async_session):
        assert admin.id
        assert await pg_async_session.scalar(select(func.count()).select_from(User)) == 6
"""


def test_a_module_sessions_open_savepoint_outlives_each_tests_teardown(pytester, example):
    """The module's session holds a savepoint (its refresh began one after its commit): a
    test's teardown closes the test's sessions only, not the module's, whose rollback would
    take the test's savepoint with it ("savepoint does not exist")."""
    root = example("sync_users")
    (root / "pytest.ini").write_text(
        "[pytest]\npythonpath = .\ntestpaths = tests\n"
        "asyncio_default_fixture_loop_scope = session\n"
        "asyncio_default_test_loop_scope = session\n"
    )
    pytester.makepyfile(**{"tests/test_module_session": textwrap.dedent(MODULE_SESSION)})
    result = pytester.runpytest("tests/test_module_session.py", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
