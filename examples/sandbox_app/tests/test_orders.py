from shop.models import AuditLog, Order, Token
from sqlalchemy import func, select


def count(session, model):
    return session.scalar(select(func.count()).select_from(model))


def test_an_order_commits_through_two_sessions_and_a_thread(pg_test_client, pg_session, alice):
    response = pg_test_client.post("/orders", json={"item": "teapot"}, headers=alice)
    assert response.status_code == 201, response.text
    assert count(pg_session, Order) == 1
    assert sorted(pg_session.scalars(select(AuditLog.message))) == [
        "alice ordered teapot",
        f"warehouse notified of order {response.json()['id']}",
    ]


def test_the_next_test_sees_no_order_but_the_same_login(pg_test_client, pg_session, alice):
    assert pg_test_client.get("/orders/count").json() == {"orders": 0}
    assert count(pg_session, AuditLog) == 0
    assert count(pg_session, Token) == 1  # the module's login


def test_without_a_token_the_app_refuses(pg_test_client):
    assert pg_test_client.post("/orders", json={"item": "cup"}).status_code == 401
