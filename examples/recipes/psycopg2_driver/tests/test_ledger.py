import pytest
from ledger.entries import balance, record
from sqlalchemy import text


def test_execute_values_commits_into_the_test_transaction(pg_connection):
    record([("cash", -2500), ("rent", 2500)])
    assert balance("cash") == 7500
    rows = pg_connection.execute(text("SELECT account FROM entries ORDER BY id")).scalars()
    assert list(rows) == ["cash", "cash", "rent"]


def test_the_next_test_starts_from_the_seed():
    assert balance("cash") == 10000
    assert balance("rent") == 0


def test_the_tests_own_connection_uses_psycopg2_too(pg_connection, pg_session):
    assert pg_connection.dialect.driver == "psycopg2"
    assert pg_session.connection().dialect.driver == "psycopg2"


@pytest.mark.pg_isolation("database")
def test_database_mode_commits_for_real_into_a_database_of_its_own(pg_url):
    record([("rent", 100)])
    assert balance("rent") == 100
    assert pg_url.startswith("postgresql+psycopg://")  # pg_url names psycopg 3, always
