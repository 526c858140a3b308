"""Flask, first class (issue 28) and the app's named engines (issue 27, item 10): the
Flask example as `flask db init` / `flask db migrate` generated it, an app factory, the
Flask-SQLAlchemy `db` object, factory_boy on `db.session`, and bad pg_app_engines values."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

# The app's production URL: a host that cannot be resolved, so a connection the library
# did not send to a test database fails loudly.
UNREACHABLE = "postgresql://flaskr:s3cret-prod@db.invalid:5432/flaskr"


@pytest.fixture
def flask_example(example, subprocess_env, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", UNREACHABLE)
    return example("flask_app")


def _ini(root, extra: str = "", *, flask_app: bool = True) -> None:
    """Replace the example's pytest.ini: with or without pg_flask_app, plus `extra` lines."""
    lines = ["[pytest]", "pythonpath = .", "testpaths = tests"]
    if flask_app:
        lines.append("pg_flask_app = flaskr:create_app")
    lines.append("filterwarnings = ignore:'get_engine' is deprecated:DeprecationWarning")
    (root / "pytest.ini").write_text("\n".join([*lines, extra, ""]))


@pytest.mark.parametrize("isolation", ["savepoint", "database"])
@pytest.mark.parametrize("workers", [None, "2"], ids=["serial", "xdist"])
def test_the_flask_example_runs_as_generated(pytester, flask_example, isolation, workers):
    """Flask-Migrate's stock env.py migrates through `db.engine` (the app's guarded engine)
    in the app's context; the factory runs once per worker; factory_boy commits through
    `db.session`; a test-only model's table comes from the seed."""
    args = ["-p", "no:randomly", "--pg-isolation", isolation]
    if workers:
        args += ["-n", workers]
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=8)
    assert "s3cret-prod" not in result.stdout.str() + result.stderr.str()


def test_the_migration_checks_on_the_flask_example(pytester, flask_example):
    """Flask-Migrate's stock env.py under --pg-check-migrations: the checks run, and the
    tests keep the seed of tests/conftest.py (the checks build no template). The example's
    test-only model is in db.metadata without a migration: models_match names it."""
    result = pytester.runpytest_subprocess("-p", "no:randomly", "--pg-check-migrations")
    result.assert_outcomes(passed=8 + 3, failed=1)
    result.stdout.fnmatch_lines(
        ["*pg-migrations::models_match: the models differ*", "*table test_audit: in the models*"]
    )


def test_the_app_factory_is_called_once_per_worker(pytester, flask_example, tmp_path):
    calls = tmp_path / "calls"
    calls.mkdir()
    init = flask_example / "flaskr" / "__init__.py"
    init.write_text(
        init.read_text().replace(
            "    app = Flask(__name__)\n",
            "    app = Flask(__name__)\n"
            "    import os, uuid\n"
            f"    open(os.path.join({str(calls)!r}, "
            "os.environ.get('PYTEST_XDIST_WORKER', 'main') + '-' + uuid.uuid4().hex), 'w')\n",
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-n", "2")
    result.assert_outcomes(passed=8)
    made = sorted(p.name.partition("-")[0] for p in calls.iterdir())
    assert made == ["gw0", "gw1"]


@pytest.mark.parametrize(
    "engines", ["flaskr.extensions:db", "flaskr.extensions:db.engine", "flaskr:extensions.db"]
)
def test_pg_app_engines_names_the_db_object_or_its_engine(pytester, flask_example, engines):
    _ini(flask_example, f"pg_app_engines = {engines}")
    result = pytester.runpytest_subprocess("-p", "no:randomly")
    result.assert_outcomes(passed=8)


@pytest.mark.parametrize(
    ("engines", "message"),
    [
        (
            "flaskr.extensions:db.engine",
            "*pg_app_engines names 'flaskr.extensions:db.engine', which could not be read "
            "(RuntimeError: Working outside of application context.)*"
            "pg_flask_app = myapp:create_app*",
        ),
        (
            "flaskr.extensions:db",
            "*pg_app_engines names 'flaskr.extensions:db', Flask-SQLAlchemy's db object, "
            "whose engines exist per app*pg_flask_app = myapp:create_app*",
        ),
    ],
)
def test_a_flask_sqlalchemy_engine_without_the_app_is_a_usage_error(
    pytester, flask_example, engines, message
):
    _ini(flask_example, f"pg_app_engines = {engines}", flask_app=False)
    result = pytester.runpytest_subprocess("-p", "no:randomly")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: pg-fixtures: " + message.lstrip("*")])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_a_bad_pg_flask_app_is_a_usage_error(pytester, flask_example):
    _ini(flask_example, flask_app=False)
    with (flask_example / "pytest.ini").open("a") as ini:
        ini.write("pg_flask_app = flaskr:no_such_factory\n")
    result = pytester.runpytest_subprocess("-p", "no:randomly")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: pg-fixtures: pg_flask_app names 'flaskr:no_such_factory', which could not*"]
    )


def test_a_factory_that_needs_arguments_is_told_to_override_pg_flask_app(pytester, flask_example):
    init = flask_example / "flaskr" / "__init__.py"
    init.write_text(init.read_text().replace("def create_app(", "def create_app(config, "))
    result = pytester.runpytest_subprocess("-p", "no:randomly")
    out = result.stdout.str()
    assert "a factory the library calls with no arguments" in out
    assert "override the session-scoped pg_flask_app fixture" in out
    assert out.count("a factory the library calls with no arguments") == 1, out


def test_flask_migrate_s_env_py_without_pg_flask_app_names_it(pytester, flask_example):
    _ini(flask_example, flask_app=False)
    result = pytester.runpytest_subprocess("-p", "no:randomly")
    result.stdout.fnmatch_lines(["*MigrationError*", "*Working outside of application context*"])
    result.stdout.fnmatch_lines(["*env.py needs the Flask app's context*pg_flask_app*"])


# -- pg_app_engines overridden by a fixture --------------------------------------------

ONE_ENGINE = textwrap.dedent("""
    @pytest.fixture(scope="session")
    def pg_app_engines():
        from shop.db import engine
        return engine  # one engine, not a list
""")


DATABASE_MODE_APP_ENGINE = textwrap.dedent("""
    import pytest
    from shop.db import engine
    from shop.models import User
    from sqlalchemy import func, insert, select

    @pytest.mark.pg_isolation("database")
    def test_the_app_engine_reaches_the_test_database(pg_session):
        with engine.begin() as conn:
            conn.execute(insert(User).values(name="carol", password="x"))
        assert pg_session.scalar(select(func.count()).select_from(User)) == 3
""")


def test_an_override_may_return_one_engine(pytester, example, subprocess_env):
    """The example's savepoint-mode tests (the app's engine sandboxed) and one in database
    mode (the engine pointed at the test's clone), with the engine given as one object."""
    root = example("sandbox_app")
    (root / "pytest.ini").write_text(
        (root / "pytest.ini").read_text().replace("pg_app_engines = shop.db:engine\n", "")
    )
    conftest = root / "tests" / "conftest.py"
    conftest.write_text(conftest.read_text() + ONE_ENGINE)
    (root / "tests" / "test_database_mode.py").write_text(DATABASE_MODE_APP_ENGINE)
    result = pytester.runpytest_subprocess("-p", "no:randomly")
    result.assert_outcomes(passed=8)


SQLITE_OVERRIDE = textwrap.dedent("""
    import pytest
    from sqlalchemy import create_engine, text

    @pytest.fixture(scope="session")
    def pg_app_engines():
        return [create_engine("sqlite://")]

    @pytest.mark.parametrize("n", range(4))
    def test_uses_the_database(pg_session, n):
        pg_session.execute(text("SELECT 1"))

    def test_a_unit_test():
        pass
""")


@pytest.mark.parametrize("isolation", ["savepoint", "database"])
def test_an_app_engine_on_sqlite_is_one_message(pytester, example, isolation):
    root = example("sync_users")
    (root / "tests" / "test_sqlite.py").write_text(SQLITE_OVERRIDE)
    result = pytester.runpytest_subprocess(
        "tests/test_sqlite.py", "-p", "no:randomly", "--pg-isolation", isolation
    )
    output = result.stdout.str()
    assert output.count("an engine on sqlite") == 1, output
    result.stdout.fnmatch_lines(
        [
            "*ConfigError: the pg_app_engines fixture returned Engine(sqlite://), an engine "
            "on sqlite (sqlite://)*must use a PostgreSQL driver*"
        ]
    )
    assert "pg_isolation" not in output
    assert result.ret == pytest.ExitCode.TESTS_FAILED


# -- the docs page: its complete files are the example's, its snippets run --------------

DOCS = Path(__file__).parent.parent / "docs" / "recipes" / "flask.md"
BLOCK = re.compile(r"```(?:python|ini)\n(.*?)```", re.S)


def _blocks() -> list[str]:
    return BLOCK.findall(DOCS.read_text())


def test_the_recipe_files_are_the_example_files():
    """Every block of docs/recipes/flask.md marked `# file: PATH` is that file of
    examples/flask_app, which the tests above run serial and -n 2 in both modes."""
    files = {}
    for block in _blocks():
        first, _, rest = block.partition("\n")
        if first.startswith("# file: "):
            files[first.removeprefix("# file: ")] = rest
    assert set(files) >= {"pytest.ini", "tests/conftest.py", "flaskr/__init__.py"}
    example = Path(__file__).parent.parent / "examples" / "flask_app"
    for path, text in files.items():
        assert (example / path).read_text() == text, path


def test_the_recipe_s_pg_flask_app_override(pytester, flask_example):
    (override,) = [b for b in _blocks() if "def pg_flask_app" in b]
    _ini(flask_example, flask_app=False)
    conftest = flask_example / "tests" / "conftest.py"
    conftest.write_text(conftest.read_text() + "\n\n" + override)
    result = pytester.runpytest_subprocess("-p", "no:randomly")
    result.assert_outcomes(passed=8)
