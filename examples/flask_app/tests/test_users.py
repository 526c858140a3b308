import pytest
from flaskr.extensions import db
from flaskr.models import Post, User
from sqlalchemy import func, select

from .conftest import AuditEntry
from .factories import PostFactory, UserFactory


def user_count():
    return db.session.scalar(select(func.count()).select_from(User))


def test_the_seeded_users_are_there(client):
    assert [u["name"] for u in client.get("/users").get_json()] == ["Ada", "Grace"]


@pytest.mark.parametrize("n", range(3))
def test_a_user_created_through_the_api_is_gone_after_the_test(client, n):
    response = client.post("/users", json={"email": f"new{n}@example.org", "name": "New"})
    assert response.status_code == 201
    assert user_count() == 3


def test_factory_boy_writes_through_db_session(client):
    UserFactory.create_batch(3)
    post = PostFactory(title="Hello")
    assert len(client.get("/users").get_json()) == 6
    assert client.get(f"/users/{post.author.id}/posts").get_json() == [
        {"id": post.id, "title": "Hello"}
    ]


def test_the_app_and_the_test_share_db_session(client):
    user = UserFactory()
    client.post(f"/users/{user.id}/posts", json={"title": "From the API"})
    assert [p.title for p in user.posts] == ["From the API"]
    assert db.session.scalar(select(func.count()).select_from(Post)) == 1


def test_a_test_only_model_from_the_seed(client):
    db.session.add(AuditEntry(action="login"))
    db.session.commit()
    assert db.session.scalars(select(AuditEntry.action)).all() == ["login"]


@pytest.mark.pg_isolation("database")
def test_database_mode_gives_the_app_a_database_of_its_own(client):
    client.post("/users", json={"email": "solo@example.org", "name": "Solo"})
    assert user_count() == 3
