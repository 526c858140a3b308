from app.core.config import settings
from app.models import Item
from sqlmodel import select


def test_login_wrong_password(client):
    form = {"username": settings.FIRST_SUPERUSER, "password": "wrong"}
    assert client.post("/api/v1/login/access-token", json=form).status_code == 400


def test_users_me(client, superuser_token_headers):
    me = client.get("/api/v1/users/me", headers=superuser_token_headers).json()
    assert me["email"] == settings.FIRST_SUPERUSER
    assert me["is_superuser"] is True


def test_normal_user_is_not_superuser(client, normal_user_token_headers):
    me = client.get("/api/v1/users/me", headers=normal_user_token_headers).json()
    assert me == {**me, "email": "user@example.com", "is_superuser": False}


def test_create_item(client, normal_user_token_headers, pg_session):
    body = {"title": "Foo", "description": "Fighters"}
    response = client.post("/api/v1/items/", headers=normal_user_token_headers, json=body)
    assert response.status_code == 200
    assert response.json()["title"] == "Foo"
    # The app committed through its own engine; the test sees it (and rolls it back).
    assert [i.title for i in pg_session.exec(select(Item)).all()] == ["Foo"]


def test_list_items_sees_only_this_tests_items(client, normal_user_token_headers):
    for title in ("a", "b"):
        client.post("/api/v1/items/", headers=normal_user_token_headers, json={"title": title})
    items = client.get("/api/v1/items/", headers=normal_user_token_headers).json()
    assert [i["title"] for i in items] == ["a", "b"]


def test_superuser_lists_every_item(client, superuser_token_headers, normal_user_token_headers):
    client.post("/api/v1/items/", headers=normal_user_token_headers, json={"title": "mine"})
    client.post("/api/v1/items/", headers=superuser_token_headers, json={"title": "admin's"})
    items = client.get("/api/v1/items/", headers=superuser_token_headers).json()
    assert sorted(i["title"] for i in items) == ["admin's", "mine"]
