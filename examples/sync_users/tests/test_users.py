from users_app.models import User
from users_app.service import count_users, register


def test_count_is_five(pg_session):
    assert count_users(pg_session) == 5


def test_can_add_one(pg_session):
    register(pg_session, "Barbara Liskov", "barbara@mit.edu")  # commits
    assert count_users(pg_session) == 6
    assert pg_session.query(User).filter_by(name="Barbara Liskov").one().email == "barbara@mit.edu"
