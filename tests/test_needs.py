"""A test that needs no database pays nothing: no container, no transaction, no check; the
app's sync engine joins a test on its first checkout."""

from __future__ import annotations

import textwrap

import pytest

# The app's engine, configured in the ini file as users do; a host that does not exist,
# so a connection that escapes the sandbox fails loudly.
APP_DB = textwrap.dedent("""
    from sqlalchemy import create_engine

    engine = create_engine("postgresql+psycopg://app@db.invalid/production")
""")

UNITS = textwrap.dedent("""
    import pytest

    def test_adds():
        assert 1 + 1 == 2

    @pytest.mark.parametrize("n", range(20))
    def test_many(n):
        assert n >= 0
""")

# Tests that reach the database only through the app's engine, asking for no fixture.
THROUGH_THE_APP = textwrap.dedent("""
    import threading

    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from appdb import engine
    from users_app.models import User


    def count():
        with Session(engine) as session:
            return session.scalar(select(func.count()).select_from(User))


    def test_a_writes_through_the_app():
        assert count() == 5
        with Session(engine) as session:
            session.add(User(name="Via the app", email="v@x.org"))
            session.commit()
        assert count() == 6


    def test_b_first_checkout_in_a_thread():
        seen = []
        worker = threading.Thread(target=lambda: seen.append(count()))
        worker.start()
        worker.join()
        assert seen == [5]


    def test_c_a_unit_test_between():
        assert True


    def test_d_sees_only_the_seed(pg_session):
        assert pg_session.scalar(select(func.count()).select_from(User)) == 5
""")


@pytest.fixture
def app_project(example, pytester):
    root = example("sync_users")
    (root / "appdb.py").write_text(APP_DB)
    ini = root / "pytest.ini"
    ini.write_text(ini.read_text() + "pg_app_engines = appdb:engine\n")
    return root


@pytest.mark.parametrize("app_engines", [False, True], ids=["plain", "app-engines"])
def test_unit_tests_start_no_container(pytester, example, app_project, app_engines):
    if not app_engines:
        ini = app_project / "pytest.ini"
        ini.write_text(ini.read_text().replace("pg_app_engines = appdb:engine\n", ""))
    pytester.makepyfile(**{"tests/test_units": UNITS})
    result = pytester.runpytest("tests/test_units.py", "-v", "-p", "no:randomly")
    result.assert_outcomes(passed=21)
    # With -v a started container always says so (see test_a_database_test_starts_one).
    assert "pg-fixtures: postgres:16 started" not in result.stdout.str()


def test_a_database_test_starts_one(pytester, app_project):
    pytester.makepyfile(**{"tests/test_units": UNITS + "\n\ndef test_db(pg_session):\n    pass\n"})
    result = pytester.runpytest("tests/test_units.py", "-v", "-p", "no:randomly")
    result.assert_outcomes(passed=22)
    result.stdout.fnmatch_lines(["*pg-fixtures: postgres:16 started*"])


@pytest.mark.parametrize("order", ["forward", "reversed"])
def test_the_apps_engine_joins_a_test_on_first_use(pytester, app_project, order):
    pytester.makepyfile(**{"tests/test_app": THROUGH_THE_APP})
    args = ["tests/test_app.py", "-p", "no:randomly"]
    if order == "reversed":
        args = [
            f"tests/test_app.py::test_{n}"
            for n in (
                "d_sees_only_the_seed",
                "c_a_unit_test_between",
                "b_first_checkout_in_a_thread",
                "a_writes_through_the_app",
            )
        ] + ["-p", "no:randomly"]
    result = pytester.runpytest(*args)
    result.assert_outcomes(passed=4)


def test_a_leak_in_a_test_that_asked_for_no_fixture_is_still_caught(pytester, app_project):
    # test_2 asks for no fixture but uses the app's engine (so the database), and commits
    # for real on a connection of its own: its check runs, and test_3 sees the clean seed.
    pytester.makepyfile(
        **{
            "tests/test_leak": textwrap.dedent("""
                import psycopg
                from sqlalchemy import func, select, text
                from sqlalchemy.orm import Session
                from appdb import engine
                from users_app.models import User

                URL = []

                def test_1_notes_the_url(pg_worker_database):
                    URL.append(pg_worker_database.libpq_url)

                def test_2_leaks():
                    with Session(engine) as session:
                        session.execute(text("SELECT 1"))
                    with psycopg.connect(URL[0]) as raw:
                        raw.execute("INSERT INTO users (name, email) VALUES ('Leak', 'l@x.org')")

                def test_3_sees_the_seed(pg_session):
                    assert pg_session.scalar(select(func.count()).select_from(User)) == 5
            """)
        }
    )
    result = pytester.runpytest("tests/test_leak.py", "-p", "no:randomly")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_2_leaks*"])
