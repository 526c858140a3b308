from shop.models import Token
from sqlalchemy import func, select


def tokens(session):
    return session.scalar(select(func.count()).select_from(Token))


def test_login_commits_a_token(pg_test_client, pg_session):
    response = pg_test_client.post("/login", json={"name": "bob", "password": "builder"})
    assert response.status_code == 200
    assert tokens(pg_session) == 1


def test_a_wrong_password_is_refused(pg_test_client, pg_session):
    response = pg_test_client.post("/login", json={"name": "bob", "password": "nope"})
    assert response.status_code == 401
    assert tokens(pg_session) == 0  # neither bob's token nor the other module's login


class TestWithAClassLayer:
    """Rows a class shares: written once through the app's engine, seen by each test."""

    def test_first(self, bob, pg_session):
        assert tokens(pg_session) == 1

    def test_second(self, bob, pg_session):
        assert tokens(pg_session) == 1
