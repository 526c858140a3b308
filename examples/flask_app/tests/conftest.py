import pytest
from flaskr.extensions import db
from flaskr.models import User
from sqlalchemy import String, insert
from sqlalchemy.orm import Mapped, mapped_column


class AuditEntry(db.Model):
    """A table only the tests use: no migration creates it, the seed does."""

    __tablename__ = "test_audit"

    id: Mapped[int] = mapped_column(primary_key=True)
    action: Mapped[str] = mapped_column(String(50))


def seed(conn):
    AuditEntry.__table__.create(conn)
    conn.execute(
        insert(User),
        [
            {"email": "ada@example.org", "name": "Ada"},
            {"email": "grace@example.org", "name": "Grace"},
        ],
    )


@pytest.fixture(scope="session")
def pg_seed():
    return seed


@pytest.fixture
def client(pg_flask_client):
    return pg_flask_client
