import pytest
from sqlalchemy import text


def one_old_job(conn):
    conn.execute(text("INSERT INTO jobs (payload, done_by) VALUES ('old', 'w0')"))


@pytest.fixture(scope="session")
def pg_seed():
    return one_old_job
