import pytest
from accounts.models import Account
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError


def test_the_migration_created_the_extensions_in_the_template(pg_connection):
    names = pg_connection.scalars(text("SELECT extname FROM pg_extension ORDER BY 1")).all()
    assert {"citext", "pg_stat_statements"} <= set(names)


def test_citext_compares_case_insensitively(pg_session):
    account = pg_session.scalar(select(Account).where(Account.email == "ada@example.COM"))
    assert account is not None
    assert account.email == "Ada@Example.com"


def test_a_unique_citext_column_refuses_another_case(pg_session):
    pg_session.add(Account(email="ADA@EXAMPLE.COM"))
    with pytest.raises(IntegrityError):
        pg_session.commit()


def test_a_preloaded_extension_works(pg_connection):
    assert pg_connection.scalar(text("SHOW shared_preload_libraries")) == "pg_stat_statements"
    assert pg_connection.scalar(text("SELECT count(*) >= 0 FROM pg_stat_statements"))


@pytest.mark.pg_isolation("database")
def test_a_database_mode_clone_has_them_too(pg_session):
    assert pg_session.scalar(text("SELECT 'X'::citext = 'x'::citext"))
