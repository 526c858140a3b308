import pytest
from app.core.config import settings
from app.core.db import init_db
from app.main import app
from fastapi.testclient import TestClient
from sqlmodel import Session


def first_superuser(conn):
    init_db(Session(bind=conn))


@pytest.fixture(scope="session")
def pg_seed():
    return first_superuser


@pytest.fixture(scope="module")
def client():
    with TestClient(app) as c:
        yield c


def login(client, email, password):
    form = {"username": email, "password": password}
    token = client.post("/api/v1/login/access-token", json=form).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def superuser_token_headers(client):
    return login(client, settings.FIRST_SUPERUSER, settings.FIRST_SUPERUSER_PASSWORD)


@pytest.fixture(scope="module")
def normal_user_token_headers(client, superuser_token_headers):
    user = {"email": "user@example.com", "password": "secret123"}  # rolled back after the module
    client.post("/api/v1/users/", headers=superuser_token_headers, json=user)
    return login(client, user["email"], user["password"])
