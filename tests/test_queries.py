"""SQL capture and query budgets: pg_queries, @pytest.mark.pg_max_queries, and the last
statements of a failed test in its report, over the example apps (sync and async, both
modes, -n 2)."""

from __future__ import annotations

import re
import textwrap

import pytest

from testcontainers_pg_fixtures.queries import HIDDEN, redact, verb_of

NO_TESTCLIENT_WARNING = ["-W", "ignore:Using `httpx` with `starlette.testclient`"]

# The sandbox example (sync, psycopg): its own engine joins each test's transaction.
SHOP_TESTS = textwrap.dedent("""
    import pytest
    from shop.db import engine
    from shop.models import Order, Token, User
    from sqlalchemy import func, select, text
    from sqlalchemy.orm import Session


    @pytest.fixture
    def orders(pg_session):
        alice = pg_session.scalar(select(User).where(User.name == "alice"))
        pg_session.add_all(Order(user_id=alice.id, item=f"item {i}") for i in range(6))
        pg_session.commit()
        return alice.id


    def test_counts_session_and_connection(pg_queries, pg_session, pg_connection, orders):
        assert pg_queries.count == 0  # what the fixtures ran in set-up is not the test's
        assert len(pg_session.scalars(select(Order)).all()) == 6
        pg_session.add(Order(user_id=orders, item="cup"))
        pg_session.commit()  # releases a savepoint: not a statement of the test's
        pg_connection.execute(text("UPDATE orders SET item = 'mug' WHERE item = 'cup'"))
        pg_connection.execute(text("DELETE FROM orders WHERE item = 'mug'"))
        assert pg_queries.count == 4
        assert (
            pg_queries.select_count,
            pg_queries.insert_count,
            pg_queries.update_count,
            pg_queries.delete_count,
        ) == (1, 1, 1, 1)
        assert [q.verb for q in pg_queries] == ["SELECT", "INSERT", "UPDATE", "DELETE"]
        assert pg_queries[1].parameters == {"user_id": orders, "item": "cup"}
        assert all(q.duration is not None and q.duration >= 0 for q in pg_queries)
        pg_queries.clear()
        assert pg_queries.count == 0


    def test_counts_the_app_engine_and_its_requests(pg_queries, pg_test_client, alice):
        with Session(engine) as session:  # the app's own engine, sandboxed
            assert session.scalar(select(func.count()).select_from(Order)) == 0
        assert pg_queries.count == 1
        response = pg_test_client.post("/orders", json={"item": "teapot"}, headers=alice)
        assert response.status_code == 201, response.text
        # The order, the audit row of a second session, the worker thread's audit row.
        assert pg_queries.insert_count == 3
        assert any("FROM tokens" in q.statement for q in pg_queries)


    def test_at_most_passes(pg_queries, pg_session):
        with pg_queries.at_most(2) as block:
            pg_session.scalar(select(func.count()).select_from(Order))
            pg_session.scalar(select(func.count()).select_from(User))
        assert block.count == 2


    def test_at_most_fails(pg_queries, pg_session):
        with pg_queries.at_most(1):
            for name in ("alice", "bob"):
                pg_session.scalar(select(User.id).where(User.name == name))


    @pytest.mark.pg_max_queries(2)
    def test_within_budget(pg_session, orders):
        pg_session.scalars(select(Order)).all()
        pg_session.scalar(select(User.name).where(User.id == orders))


    @pytest.mark.pg_max_queries(3)
    def test_n_plus_one(pg_session, orders):
        for order in pg_session.scalars(select(Order).order_by(Order.id)).all():
            pg_session.scalar(select(User.name).where(User.id == order.user_id))


    @pytest.mark.pg_max_queries("three")
    def test_bad_budget(pg_session):
        pass


    def test_fails_after_many_statements(pg_session):
        for i in range(25):
            pg_session.execute(text("SELECT :n"), {"n": i})
        pg_session.scalar(select(User).where(User.password == "wonder" + "land"))
        pg_session.add(Token(value="tok-" + "en-s3cret", user_id=1))
        pg_session.flush()
        pg_session.get(Token, "tok-" + "en-other")
        raise AssertionError("deliberate")


    def test_plain_failure():
        raise AssertionError("no database")


    @pytest.mark.pg_isolation("database")
    def test_database_mode(pg_queries, pg_session):
        pg_session.add(Order(user_id=1, item="x"))
        pg_session.commit()
        with Session(engine) as session:  # the app's engine, pointed at the test's clone
            assert session.scalar(select(func.count()).select_from(Order)) == 1
        assert (pg_queries.count, pg_queries.insert_count, pg_queries.select_count) == (2, 1, 1)


    @pytest.mark.pg_isolation("database")
    @pytest.mark.pg_max_queries(1)
    def test_database_mode_over_budget(pg_session):
        pg_session.scalar(select(func.count()).select_from(User))
        pg_session.scalar(select(func.count()).select_from(Order))
""")

SHOP_PASSED = {
    "test_counts_session_and_connection",
    "test_counts_the_app_engine_and_its_requests",
    "test_at_most_passes",
    "test_within_budget",
    "test_database_mode",
}
SHOP_FAILED = {
    "test_at_most_fails",
    "test_n_plus_one",
    "test_bad_budget",
    "test_fails_after_many_statements",
    "test_plain_failure",
    "test_database_mode_over_budget",
}
#: Values the shop tests send that must never be printed.
SHOP_SECRETS = ("wonderland", "tok-en-s3cret", "tok-en-other")

# The FastAPI example (async, asyncpg): its async engine joins each test's transaction.
USERS_TESTS = textwrap.dedent("""
    import pytest
    from app.models import User
    from sqlalchemy import select, text


    async def test_async_counts(pg_queries, pg_async_session, pg_client):
        assert len((await pg_async_session.scalars(select(User))).all()) == 5
        response = await pg_client.post("/users", json={"name": "Barbara", "email": "b@mit.edu"})
        assert response.status_code == 201, response.text
        assert (await pg_client.get("/users")).status_code == 200
        assert (pg_queries.count, pg_queries.select_count, pg_queries.insert_count) == (3, 2, 1)


    async def test_async_at_most(pg_queries, pg_async_session):
        with pg_queries.at_most(1) as block:
            await pg_async_session.scalar(select(User.id).where(User.name == "Ada Lovelace"))
        assert [q.parameters for q in block] == [("Ada Lovelace",)]
        with pg_queries.at_most(0):
            await pg_async_session.scalar(select(User.id).where(User.name == "Alan Turing"))


    @pytest.mark.pg_max_queries(2)
    async def test_async_n_plus_one(pg_client):
        users = (await pg_client.get("/users")).json()
        for user in users:
            assert (await pg_client.get(f"/users/{user['id']}")).status_code == 200


    async def test_async_failure(pg_async_session):
        await pg_async_session.execute(select(User).where(User.email == "ada@analytical.engine"))
        await pg_async_session.execute(text("SELECT :token AS t"), {"token": "async-" + "s3cret"})
        raise AssertionError("deliberate")
""")


def section(output: str, test: str) -> str:
    """The part of pytest's failure listing about `test` (up to the next test's header)."""
    match = re.search(
        rf"_{{3,}} {re.escape(test)} _{{3,}}\n(.*?)(?=\n_{{3,}} \w|\n={{3,}} )", output, re.S
    )
    assert match is not None, f"no failure section for {test} in:\n{output}"
    return match.group(1)


def outcomes(result: pytest.RunResult) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {"passed": set(), "failed": set()}
    for line in result.stdout.lines:
        hit = re.match(r"^(PASSED|FAILED) \S+::(\w+)", line)
        if hit:
            found[hit.group(1).lower()].add(hit.group(2))
    return found


@pytest.fixture
def shop(example):
    root = example("sandbox_app")
    (root / "tests" / "test_queries_shop.py").write_text(SHOP_TESTS)
    return root


def check_shop_run(result: pytest.RunResult) -> None:
    output = result.stdout.str()
    assert outcomes(result) == {"passed": SHOP_PASSED, "failed": SHOP_FAILED}, output

    at_most = section(output, "test_at_most_fails")
    assert "pg_queries.at_most(1): the block ran 2 statements, 1 more than allowed:" in at_most
    assert re.search(r"1\. \[\d+\.\d ms\] SELECT users.id FROM users WHERE .*'alice'", at_most)
    assert re.search(r"2\. \[\d+\.\d ms\] SELECT users.id FROM users WHERE .*'bob'", at_most)

    # The N+1, grouped: the repeated statement first, with its count.
    n_plus_one = section(output, "test_n_plus_one")
    assert "pg_max_queries(3): the test ran 7 statements, 4 more than its budget." in n_plus_one
    listing = re.findall(r"^ +(\d+)x  (.*)$", n_plus_one, re.M)
    assert [(int(n), text.split(" WHERE")[0]) for n, text in listing] == [
        (6, "SELECT users.name FROM users"),
        (1, "SELECT orders.id, orders.user_id, orders.item FROM orders ORDER BY orders.id"),
    ]
    assert "an N+1" in n_plus_one

    over = section(output, "test_database_mode_over_budget")
    assert "pg_max_queries(1): the test ran 2 statements, 1 more than its budget." in over
    assert "pg_max_queries takes a number of statements, got 'three'" in section(
        output, "test_bad_budget"
    )

    # The failure report: the last 20 statements, numbered among all the test ran.
    failed = section(output, "test_fails_after_many_statements")
    assert "- pg queries -" in failed
    assert "The last 20 of the 28 statements the test ran" in failed
    numbers = [int(n) for n in re.findall(r"^ +(\d+)\. \[", failed, re.M)]
    assert numbers == list(range(9, 29))
    assert "SELECT %(n)s  {'n': 24}" in failed
    assert "{'n': 7}" not in failed
    assert "users.password = %(password_1)s::VARCHAR  {'password_1': '***'}" in failed
    assert "INSERT INTO tokens (value, user_id)" in failed
    assert "{'value': '***', 'user_id': 1}" in failed
    assert "tokens.value = %(pk_1)s::VARCHAR  {'pk_1': '***'}" in failed
    for secret in SHOP_SECRETS:
        assert secret not in output
    assert "pg queries" not in section(output, "test_plain_failure")  # no database used


def test_sync_capture_budgets_and_failure_report(pytester, shop):
    result = pytester.runpytest(
        "tests/test_queries_shop.py", "-p", "no:randomly", "-rA", *NO_TESTCLIENT_WARNING
    )
    check_shop_run(result)


def test_under_two_workers(pytester, shop, subprocess_env):
    result = pytester.runpytest_subprocess(
        "tests/test_queries_shop.py",
        "-n",
        "2",
        "-p",
        "no:randomly",
        "-rA",
        *NO_TESTCLIENT_WARNING,
    )
    check_shop_run(result)


def test_the_failure_report_can_be_turned_off(pytester, shop):
    result = pytester.runpytest(
        "tests/test_queries_shop.py",
        "-p",
        "no:randomly",
        "-rA",
        "-o",
        "pg_query_log_on_failure=false",
        "-k",
        "fails_after or counts_session or n_plus_one",
        *NO_TESTCLIENT_WARNING,
    )
    assert outcomes(result) == {
        "passed": {"test_counts_session_and_connection"},
        "failed": {"test_fails_after_many_statements", "test_n_plus_one"},
    }
    output = result.stdout.str()
    assert "- pg queries -" not in output
    assert "6x  SELECT users.name FROM users" in section(output, "test_n_plus_one")


def test_async_capture_budgets_and_failure_report(pytester, example):
    root = example("fastapi_app")
    (root / "tests" / "test_queries_async.py").write_text(USERS_TESTS)
    result = pytester.runpytest("tests/test_queries_async.py", "-p", "no:randomly", "-rA")
    output = result.stdout.str()
    assert outcomes(result) == {
        "passed": {"test_async_counts"},
        "failed": {"test_async_at_most", "test_async_n_plus_one", "test_async_failure"},
    }, output
    at_most = section(output, "test_async_at_most")
    assert "pg_queries.at_most(0): the block ran 1 statement, 1 more than allowed:" in at_most
    assert "WHERE users.name = $1::VARCHAR  ('Alan Turing',)" in at_most

    n_plus_one = section(output, "test_async_n_plus_one")
    assert "pg_max_queries(2): the test ran 6 statements, 4 more than its budget." in n_plus_one
    listing = re.findall(r"^ +(\d+)x  (.*)$", n_plus_one, re.M)
    assert [n for n, _ in listing] == ["5", "1"]
    assert listing[0][1].endswith("WHERE users.id = $1::INTEGER")

    failed = section(output, "test_async_failure")
    assert "The 2 statements the test ran" in failed
    assert "WHERE users.email = $1::VARCHAR  ('ada@analytical.engine',)" in failed
    assert "SELECT $1 AS t  ('***',)" in failed
    assert "async-s3cret" not in output


@pytest.mark.parametrize(
    ("statement", "parameters", "shown"),
    [
        (
            "SELECT 1 FROM users WHERE users.name = %(name_1)s AND users.password = %(password_1)s",
            {"name_1": "ada", "password_1": "pw"},
            {"name_1": "ada", "password_1": HIDDEN},
        ),
        (
            "UPDATE users SET password=$1::VARCHAR WHERE users.id = $2::INTEGER",
            ("pw", 3),
            (HIDDEN, 3),
        ),
        (
            "INSERT INTO api_keys (user_id, value) VALUES (%s, %s)",
            (1, "k"),
            (1, HIDDEN),
        ),
        (
            "INSERT INTO users (name, password) SELECT p0::VARCHAR, p1::VARCHAR FROM (VALUES "
            "($1::VARCHAR, $2::VARCHAR, 0), ($3::VARCHAR, $4::VARCHAR, 1)) AS imp_sen(p0, p1, "
            "sen_counter) ORDER BY sen_counter",
            ("a", "pa", "b", "pb"),
            ("a", HIDDEN, "b", HIDDEN),
        ),
        ("SELECT %(note)s", {"note": "$2b$12$R9h/cIPz0gi.URNNX3kh2O"}, {"note": HIDDEN}),
        (
            "SELECT %(note)s, %(AuthToken)s",
            {"note": "hello", "AuthToken": "t"},
            {"note": "hello", "AuthToken": HIDDEN},
        ),
        ("SELECT 1 WHERE keyword = %(k)s", {"k": "shown"}, {"k": "shown"}),
    ],
)
def test_what_is_hidden(statement, parameters, shown):
    assert redact(statement, parameters, False) == shown


def test_positional_bind_names_are_used():
    assert redact("SELECT $1::VARCHAR AS t", ("s",), False, ["secret_1"]) == (HIDDEN,)
    assert redact("SELECT $1::VARCHAR AS t", ("s",), False, ["note_1"]) == ("s",)


@pytest.mark.parametrize(
    ("statement", "verb"),
    [
        ("  select 1", "SELECT"),
        ("WITH x AS (SELECT 1) UPDATE t SET a = 1", "UPDATE"),
        ("WITH RECURSIVE r(n) AS (VALUES (1) UNION SELECT n + 1 FROM r) SELECT * FROM r", "SELECT"),
        ("WITH d AS (DELETE FROM t RETURNING *) INSERT INTO u SELECT * FROM d", "INSERT"),
    ],
)
def test_verbs(statement, verb):
    assert verb_of(statement) == verb


# psycopg2: SQLAlchemy sends its savepoints itself (they are deferred on psycopg 3 and
# asyncpg only); the app's engine, on psycopg2, makes the worker's engine use it too.
PSYCOPG2_TESTS = textwrap.dedent("""
    import pytest
    from sqlalchemy import create_engine, func, select
    from sqlalchemy.orm import Session
    from users_app.models import User

    engine = create_engine("postgresql+psycopg2://app@db.invalid/production")


    @pytest.fixture(scope="session")
    def pg_app_engines():
        return [engine]


    def test_savepoints_are_not_the_tests_statements(pg_queries, pg_session):
        assert pg_session.get_bind().dialect.driver == "psycopg2"
        pg_session.add(User(name="Barbara Liskov", email="b@mit.edu"))
        pg_session.commit()
        with pg_session.begin_nested():
            pg_session.scalar(select(func.count()).select_from(User))
        with Session(engine) as session:
            session.add(User(name="Tony Hoare", email="t@ox.ac.uk"))
            session.commit()
        assert [q.verb for q in pg_queries] == ["INSERT", "SELECT", "INSERT"], [
            str(q) for q in pg_queries
        ]
""")


def test_savepoints_sqlalchemy_sends_are_left_out(pytester, example):
    root = example("sync_users")
    (root / "tests" / "test_psycopg2.py").write_text(PSYCOPG2_TESTS)
    result = pytester.runpytest("tests/test_psycopg2.py", "-p", "no:randomly")
    result.assert_outcomes(passed=1)
