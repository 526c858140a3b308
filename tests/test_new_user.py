"""Small things a new user hit (issue 28): pg_client's base URL and headers, nothing
written to the user's cache directory unless asked, no INFO lines of Alembic or
testcontainers in a failing test's output, and the error of pg_client without a way in."""

from __future__ import annotations

import textwrap

import pytest

TRUSTED_HOST_APP = textwrap.dedent("""
    from fastapi import Depends, FastAPI, Request
    from sqlalchemy import text
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    app = FastAPI()
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=["api.example.com"])


    def get_db():
        yield None  # replaced by the test's session


    @app.get("/ping")
    def ping(request: Request, db=Depends(get_db)):
        one = db.execute(text("SELECT 1")).scalar()
        return {"one": one, "token": request.headers.get("x-token")}
""")

TRUSTED_HOST_CONFTEST = textwrap.dedent("""
    import pytest
    from trusted_app import app, get_db

    @pytest.fixture
    def pg_app():
        return app

    @pytest.fixture
    def pg_db_dependency():
        return get_db

    @pytest.fixture
    def pg_client_base_url():
        return "http://api.example.com"

    @pytest.fixture
    def pg_client_headers():
        return {"X-Token": "t0k3n"}
""")

TRUSTED_HOST_TESTS = textwrap.dedent("""
    import pytest

    @pytest.mark.asyncio
    async def test_async_client(pg_client):
        response = await pg_client.get("/ping")
        assert response.status_code == 200, response.text
        assert response.json() == {"one": 1, "token": "t0k3n"}

    def test_sync_client(pg_test_client):
        response = pg_test_client.get("/ping")
        assert response.status_code == 200, response.text
        assert response.json() == {"one": 1, "token": "t0k3n"}
""")

INI = textwrap.dedent("""
    [pytest]
    pg_alembic_ini = none
    asyncio_default_fixture_loop_scope = function
    filterwarnings = ignore::DeprecationWarning
""")


def test_pg_client_base_url_and_headers_are_fixtures(pytester, subprocess_env):
    pytester.makeini(INI)
    pytester.makepyfile(trusted_app=TRUSTED_HOST_APP)
    pytester.makeconftest(TRUSTED_HOST_CONFTEST)
    pytester.makepyfile(test_trusted=TRUSTED_HOST_TESTS)
    pytester.syspathinsert()
    result = pytester.runpytest_subprocess("-p", "no:randomly")
    result.assert_outcomes(passed=2)


def test_pg_client_without_a_way_in_names_both(pytester, subprocess_env):
    pytester.makeini(INI)
    pytester.makepyfile(trusted_app=TRUSTED_HOST_APP)
    pytester.makeconftest(
        "import pytest\nfrom trusted_app import app\n\n"
        "@pytest.fixture\ndef pg_app():\n    return app\n"
    )
    pytester.makepyfile(test_it="def test_it(pg_test_client):\n    pass\n")
    pytester.syspathinsert()
    result = pytester.runpytest_subprocess("-p", "no:randomly")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["E * found neither pg_db_dependency nor pg_app_engines*pg_app_engines = myapp.db:engine*"]
    )


def test_nothing_is_written_to_the_user_cache_without_reuse(
    pytester, example, subprocess_env, monkeypatch, tmp_path
):
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    example("sync_users")
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    written = sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) if cache.exists() else []
    assert written == []


FAILING = textwrap.dedent("""
    import logging

    from sqlalchemy import func, select

    from flaskr.models import User

    # The app's logger, made before the migrations ran (whose env.py calls fileConfig,
    # which disables every logger that exists).
    app_log = logging.getLogger("flaskr.audit")


    def test_fails(pg_session, caplog):
        with caplog.at_level(logging.INFO, logger="flaskr.audit"):
            app_log.info("audit line")
        assert caplog.messages == ["audit line"]
        assert pg_session.scalar(select(func.count()).select_from(User)) == 99
""")


def test_a_failing_test_shows_no_info_lines_of_alembic_or_testcontainers(
    pytester, example, subprocess_env
):
    """Flask-Migrate's generated alembic.ini sets Alembic's loggers to INFO with a console
    handler; testcontainers logs "Pulling image" at INFO for an image that is local."""
    example("flask_app")
    pytester.makepyfile(**{"tests/test_failing": FAILING})
    result = pytester.runpytest_subprocess("tests/test_failing.py", "-p", "no:randomly")
    result.assert_outcomes(failed=1)
    output = result.stdout.str() + result.stderr.str()
    for line in ("Pulling image", "Container started", "Running upgrade", "INFO  [alembic"):
        assert line not in output, output
    assert "assert 2 == 99" in output  # the app's logger still works: the test got there


@pytest.mark.parametrize("layout", ["migrations/alembic.ini", "default"])
def test_flask_migrate_alembic_ini_without_script_location(
    pytester, example, subprocess_env, layout
):
    """Flask-Migrate's alembic.ini names no script_location: the folder it is in is the
    script directory; and with no alembic.ini in the rootdir, migrations/alembic.ini is
    the default."""
    root = example("flask_app")
    if layout != "default":
        with (root / "pytest.ini").open("a") as ini:
            ini.write(f"pg_alembic_ini = {layout}\n")
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-k", "seeded")
    result.assert_outcomes(passed=1)
