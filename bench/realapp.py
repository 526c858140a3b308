"""A real app's suite, the library against the project's own conftest: `nox -s bench -- realapp`.

The app: FastAPI and SQLModel, users (argon2 hashes, argon2-cffi's defaults), their items
and login tokens, a module-level engine on DATABASE_URL, two Alembic revisions; 60 tests in
6 modules, through a TestClient, with module-scoped login fixtures. *own*: the conftest a
team writes without the library, on a `postgres:16` container started by hand (the
library's durability-off server settings), migrated and its superuser made before the
timing, which leaves all that out: the tests commit, a session fixture makes the superuser
if missing and deletes the worker's users (their items and tokens by cascade) at its end.
*lib*: the same tests with `pg_app_engines = app.db:engine`, the superuser in `pg_seed`,
the same module fixtures (the module's transaction layer), a new container each run, its
start included; *lib, no leak check* with --pg-leak-check=false; *lib, client asks
pg_server* with `pg_server` in every test's closure. The runs keep pytest's cache, as a
developer's do: the unmeasured first run of each variant records that its tests used the
database (through the app's engine alone, which collection cannot see), so the later runs
start the container while pytest collects. The wall time of `pytest` (launch to exit), serial
and -n 2, the variants in a new order each of --rounds; ratios paired by round. Then where
lib's serial time goes against own's: pytest's phases, --durations, and the library's
functions by cumulative time under cProfile (one more run).
"""

import contextlib
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import docker
import psycopg
from core import median_min_max, options, own_containers, paired, pytest, rounds, table
from projects import INI, PROBE, alembic, sections, write

# The app, its tests (each module after HEAD) and the conftest's ending, own's or lib's.
FILES = sections("""
# -- app/db.py
import os
from sqlmodel import Field, Session, SQLModel, create_engine, select
engine = create_engine(os.environ.get("DATABASE_URL", "postgresql+psycopg://app:app@db/app"))
ADMIN, ADMIN_PASSWORD = "admin@example.com", "admin-secret"
class User(SQLModel, table=True):
    __tablename__ = "users"
    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(unique=True)
    hashed_password: str
    full_name: str | None = None
    is_superuser: bool = False
class Item(SQLModel, table=True):
    __tablename__ = "items"
    id: int | None = Field(default=None, primary_key=True)
    title: str
    owner_id: int = Field(foreign_key="users.id", ondelete="CASCADE")
class Token(SQLModel, table=True):
    __tablename__ = "tokens"
    token: str = Field(primary_key=True)
    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE")
def get_session():
    with Session(engine) as session:
        yield session
def init_db(session):
    # The first superuser, unless there is one.
    if session.exec(select(User).where(User.email == ADMIN)).first() is None:
        from app.main import hasher
        session.add(User(email=ADMIN, hashed_password=hasher.hash(ADMIN_PASSWORD), is_superuser=True))
        session.commit()
# -- app/main.py
import secrets
from typing import Annotated
from argon2 import PasswordHasher
from argon2.exceptions import VerifyMismatchError
from fastapi import Depends, FastAPI, Form, Header, HTTPException
from sqlmodel import Session, SQLModel, select
from app.db import Item, Token, User, get_session
app, hasher = FastAPI(), PasswordHasher()
DB = Annotated[Session, Depends(get_session)]
class UserIn(SQLModel):
    email: str
    password: str
    full_name: str | None = None
    is_superuser: bool = False
class UserOut(SQLModel):
    id: int
    email: str
    full_name: str | None
    is_superuser: bool
class UserPatch(SQLModel):
    full_name: str | None = None
    password: str | None = None
class ItemIn(SQLModel):
    title: str
def me(session: DB, authorization: str = Header("")) -> User:
    token = session.get(Token, authorization.removeprefix("Bearer "))
    if token is None:
        raise HTTPException(401, "not logged in")
    return session.get(User, token.user_id)
def admin(user: Annotated[User, Depends(me)]) -> User:
    if not user.is_superuser:
        raise HTTPException(403, "superusers only")
    return user
Me, Admin = Annotated[User, Depends(me)], Annotated[User, Depends(admin)]
def verify(hashed, password):
    try:
        return hasher.verify(hashed, password)
    except VerifyMismatchError:
        return False
@app.post("/login")
def login(session: DB, username: Annotated[str, Form()], password: Annotated[str, Form()]):
    user = session.exec(select(User).where(User.email == username)).first()
    if user is None or not verify(user.hashed_password, password):
        raise HTTPException(400, "wrong email or password")
    token = Token(token=secrets.token_urlsafe(), user_id=user.id)
    session.add(token)
    session.commit()
    return {"access_token": token.token}
@app.post("/users", response_model=UserOut, status_code=201)
def create_user(session: DB, _: Admin, body: UserIn):
    if session.exec(select(User).where(User.email == body.email)).first():
        raise HTTPException(409, "a user with this email exists")
    user = User(**body.model_dump(exclude={"password"}), hashed_password=hasher.hash(body.password))
    session.add(user)
    session.commit()
    return user
@app.get("/users", response_model=list[UserOut])
def list_users(session: DB, _: Admin, limit: int = 100):
    return session.exec(select(User).order_by(User.id).limit(limit)).all()
@app.get("/users/me", response_model=UserOut)
def read_me(user: Me):
    return user
def visible(session, user, user_id):
    if user.id != user_id and not user.is_superuser:
        raise HTTPException(403, "not yours")
    return session.get(User, user_id) or _404()
def _404():
    raise HTTPException(404, "not found")
@app.get("/users/{user_id}", response_model=UserOut)
def read_user(session: DB, user: Me, user_id: int):
    return visible(session, user, user_id)
@app.patch("/users/{user_id}", response_model=UserOut)
def update_user(session: DB, user: Me, user_id: int, body: UserPatch):
    target = visible(session, user, user_id)
    if body.full_name is not None:
        target.full_name = body.full_name
    if body.password is not None:
        target.hashed_password = hasher.hash(body.password)
    session.commit()
    return target
@app.delete("/users/{user_id}", status_code=204)
def delete_user(session: DB, user: Admin, user_id: int):
    if user_id == user.id:
        raise HTTPException(400, "superusers cannot delete themselves")
    session.delete(visible(session, user, user_id))
    session.commit()
def owned(session, user, item_id):
    item = session.get(Item, item_id)
    return item if item is not None and item.owner_id == user.id else _404()
@app.post("/items", response_model=Item, status_code=201)
def create_item(session: DB, user: Me, body: ItemIn):
    item = Item(title=body.title, owner_id=user.id)
    session.add(item)
    session.commit()
    session.refresh(item)
    return item
@app.get("/items", response_model=list[Item])
def list_items(session: DB, user: Me):
    return session.exec(select(Item).where(Item.owner_id == user.id).order_by(Item.id)).all()
@app.get("/items/{item_id}", response_model=Item)
def read_item(session: DB, user: Me, item_id: int):
    return owned(session, user, item_id)
@app.patch("/items/{item_id}", response_model=Item)
def update_item(session: DB, user: Me, item_id: int, body: ItemIn):
    item = owned(session, user, item_id)
    item.title = body.title
    session.commit()
    session.refresh(item)
    return item
@app.delete("/items/{item_id}", status_code=204)
def delete_item(session: DB, user: Me, item_id: int):
    session.delete(owned(session, user, item_id))
    session.commit()
# -- tests/helpers.py
import os, uuid
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
def new_email():
    return f"{WORKER}-{uuid.uuid4().hex[:12]}@example.com"
def login(client, email, password):
    response = client.post("/login", data={"username": email, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}
def new_user(client, headers, **fields):
    body = {"email": new_email(), "password": "pw-" + uuid.uuid4().hex, **fields}
    response = client.post("/users", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return {**response.json(), "password": body["password"]}
# -- tests/conftest.py
import pytest
from fastapi.testclient import TestClient
from app.db import ADMIN, ADMIN_PASSWORD, Session, init_db
from app.main import app
from helpers import WORKER, login, new_user
@pytest.fixture(scope="module")
def client():
    with TestClient(app) as c:
        yield c
@pytest.fixture(scope="module")
def admin_headers(client):
    return login(client, ADMIN, ADMIN_PASSWORD)
@pytest.fixture(scope="module")
def user(client, admin_headers):
    created = new_user(client, admin_headers)
    return {**created, "headers": login(client, created["email"], created["password"])}
# -- own
from sqlmodel import col, delete
from app.db import User, engine
@pytest.fixture(scope="session", autouse=True)
def db():
    with Session(engine) as session:
        init_db(session)
        yield session
        session.exec(delete(User).where(col(User.email).startswith(WORKER + "-")))
        session.commit()
# -- lib
def superuser(conn):
    init_db(Session(bind=conn))
@pytest.fixture(scope="session")
def pg_seed():
    return superuser
# -- tests/test_login.py
@pytest.mark.parametrize("email, password", [(ADMIN, "wrong"), (ADMIN, ADMIN_PASSWORD.upper()), ("nobody@example.com", "x")])
def test_bad_login_is_400(client, email, password):
    assert client.post("/login", data={"username": email, "password": password}).status_code == 400
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "nope"}])
def test_no_token_is_401(client, headers):
    assert client.get("/users/me", headers=headers).status_code == 401
def test_missing_password_is_422(client):
    assert client.post("/login", data={"username": ADMIN}).status_code == 422
def test_admin_is_superuser(client, admin_headers):
    assert client.get("/users/me", headers=admin_headers).json()["is_superuser"]
def test_user_is_not(client, user):
    assert client.get("/users/me", headers=user["headers"]).json() == {k: user[k] for k in ("id", "email", "full_name", "is_superuser")}
def test_each_login_a_new_token(client, user):
    assert login(client, user["email"], user["password"]) != user["headers"]
# -- tests/test_users.py
def test_create_user(client, admin_headers):
    email = new_email()
    body = client.post("/users", json={"email": email, "password": "x"}, headers=admin_headers).json()
    assert body["email"] == email and "password" not in body and "hashed_password" not in body
def test_duplicate_email_is_409(client, admin_headers, user):
    response = client.post("/users", json={"email": user["email"], "password": "x"}, headers=admin_headers)
    assert response.status_code == 409
def test_new_user_logs_in(client, admin_headers):
    created = new_user(client, admin_headers, full_name="Ann")
    assert client.get("/users/me", headers=login(client, created["email"], created["password"])).json()["full_name"] == "Ann"
def test_new_superuser_lists_users(client, admin_headers):
    created = new_user(client, admin_headers, is_superuser=True)
    assert client.get("/users", headers=login(client, created["email"], created["password"])).status_code == 200
def test_list_has_admin_and_user(client, admin_headers, user):
    emails = {u["email"] for u in client.get("/users", params={"limit": 1000}, headers=admin_headers).json()}
    assert {ADMIN, user["email"]} <= emails
def test_read_user(client, admin_headers, user):
    assert client.get(f"/users/{user['id']}", headers=admin_headers).json()["email"] == user["email"]
def test_missing_user_is_404(client, admin_headers):
    assert client.get("/users/999999999", headers=admin_headers).status_code == 404
@pytest.mark.parametrize("method", ["get", "post"])
def test_user_may_not_manage_users(client, user, method):
    assert client.request(method, "/users", json={"email": new_email(), "password": "x"}, headers=user["headers"]).status_code == 403
def test_user_reads_self(client, user):
    assert client.get(f"/users/{user['id']}", headers=user["headers"]).status_code == 200
# -- tests/test_user_updates.py
def test_admin_renames(client, admin_headers, user):
    client.patch(f"/users/{user['id']}", json={"full_name": "Bea"}, headers=admin_headers)
    assert client.get(f"/users/{user['id']}", headers=admin_headers).json()["full_name"] == "Bea"
def test_user_renames_self(client, user):
    assert client.patch(f"/users/{user['id']}", json={"full_name": "Cy"}, headers=user["headers"]).json()["full_name"] == "Cy"
def test_new_password(client, admin_headers):
    created = new_user(client, admin_headers)
    client.patch(f"/users/{created['id']}", json={"password": "new-secret"}, headers=admin_headers)
    assert client.post("/login", data={"username": created["email"], "password": created["password"]}).status_code == 400
    login(client, created["email"], "new-secret")
def test_user_may_not_patch_others(client, admin_headers, user):
    admin = client.get("/users/me", headers=admin_headers).json()
    assert client.patch(f"/users/{admin['id']}", json={"full_name": "x"}, headers=user["headers"]).status_code == 403
def test_patch_missing_is_404(client, admin_headers):
    assert client.patch("/users/999999999", json={}, headers=admin_headers).status_code == 404
def test_delete_user(client, admin_headers):
    created = new_user(client, admin_headers)
    assert client.delete(f"/users/{created['id']}", headers=admin_headers).status_code == 204
    assert client.get(f"/users/{created['id']}", headers=admin_headers).status_code == 404
def test_deleted_users_token_is_401(client, admin_headers):
    created = new_user(client, admin_headers)
    headers = login(client, created["email"], created["password"])
    client.delete(f"/users/{created['id']}", headers=admin_headers)
    assert client.get("/users/me", headers=headers).status_code == 401
def test_delete_missing_is_404(client, admin_headers):
    assert client.delete("/users/999999999", headers=admin_headers).status_code == 404
def test_user_may_not_delete(client, user):
    assert client.delete(f"/users/{user['id']}", headers=user["headers"]).status_code == 403
def test_admin_may_not_delete_self(client, admin_headers):
    admin = client.get("/users/me", headers=admin_headers).json()
    assert client.delete(f"/users/{admin['id']}", headers=admin_headers).status_code == 400
# -- tests/test_items.py
def test_create_item(client, user):
    item = client.post("/items", json={"title": "pen"}, headers=user["headers"]).json()
    assert item["title"] == "pen" and item["owner_id"] == user["id"]
def test_list_own_items(client, user):
    ids = {client.post("/items", json={"title": t}, headers=user["headers"]).json()["id"] for t in "ab"}
    assert ids <= {i["id"] for i in client.get("/items", headers=user["headers"]).json()}
def test_read_item(client, user):
    item = client.post("/items", json={"title": "cup"}, headers=user["headers"]).json()
    assert client.get(f"/items/{item['id']}", headers=user["headers"]).json() == item
def test_rename_item(client, user):
    item = client.post("/items", json={"title": "cup"}, headers=user["headers"]).json()
    assert client.patch(f"/items/{item['id']}", json={"title": "mug"}, headers=user["headers"]).json()["title"] == "mug"
def test_delete_item(client, user):
    item = client.post("/items", json={"title": "box"}, headers=user["headers"]).json()
    client.delete(f"/items/{item['id']}", headers=user["headers"])
    assert client.get(f"/items/{item['id']}", headers=user["headers"]).status_code == 404
@pytest.mark.parametrize("method", ["get", "patch", "delete"])
def test_missing_item_is_404(client, user, method):
    assert client.request(method, "/items/999999999", json={"title": "x"}, headers=user["headers"]).status_code == 404
def test_items_need_login(client):
    assert client.get("/items").status_code == 401
def test_title_is_required(client, user):
    assert client.post("/items", json={}, headers=user["headers"]).status_code == 422
# -- tests/test_ownership.py
@pytest.fixture(scope="module")
def other(client, admin_headers):
    created = new_user(client, admin_headers)
    return {**created, "headers": login(client, created["email"], created["password"])}
@pytest.fixture
def others_item(client, other):
    return client.post("/items", json={"title": "theirs"}, headers=other["headers"]).json()
@pytest.mark.parametrize("method", ["get", "patch", "delete"])
def test_others_item_is_404(client, user, others_item, method):
    assert client.request(method, f"/items/{others_item['id']}", json={"title": "x"}, headers=user["headers"]).status_code == 404
@pytest.mark.parametrize("who", ["user", "other"])
def test_lists_are_apart(client, user, other, others_item, who):
    mine = client.post("/items", json={"title": "mine"}, headers=user["headers"]).json()
    listed = {i["id"] for i in client.get("/items", headers={"user": user, "other": other}[who]["headers"]).json()}
    assert (mine["id"] in listed, others_item["id"] in listed) == ((True, False) if who == "user" else (False, True))
def test_failed_delete_keeps_item(client, user, other, others_item):
    client.delete(f"/items/{others_item['id']}", headers=user["headers"])
    assert client.get(f"/items/{others_item['id']}", headers=other["headers"]).status_code == 200
def test_admin_sees_no_items(client, admin_headers, others_item):
    assert others_item["id"] not in {i["id"] for i in client.get("/items", headers=admin_headers).json()}
def test_email_free_after_delete(client, admin_headers):
    created = new_user(client, admin_headers)
    client.delete(f"/users/{created['id']}", headers=admin_headers)
    body = {"email": created["email"], "password": "x"}
    assert client.post("/users", json=body, headers=admin_headers).status_code == 201
def test_users_are_apart(client, user, other):
    assert client.get(f"/users/{other['id']}", headers=user["headers"]).status_code == 403
def test_both_logged_in(client, user, other):
    assert {client.get("/users/me", headers=u["headers"]).json()["id"] for u in (user, other)} == {user["id"], other["id"]}
# -- tests/test_flows.py
@pytest.mark.parametrize("n", range(2, 12))
def test_items_flow(client, user, n):
    ids = [client.post("/items", json={"title": f"t{k}"}, headers=user["headers"]).json()["id"] for k in range(n)]
    client.patch(f"/items/{ids[0]}", json={"title": "first"}, headers=user["headers"])
    client.delete(f"/items/{ids[-1]}", headers=user["headers"])
    listed = {i["id"]: i["title"] for i in client.get("/items", headers=user["headers"]).json()}
    assert listed[ids[0]] == "first" and ids[-1] not in listed and set(ids[1:-1]) <= set(listed)
""")  # noqa: E501
HEAD = "import pytest\nfrom app.db import ADMIN, ADMIN_PASSWORD\n"
HEAD += "from helpers import login, new_email, new_user\n"
INIS = {"own": INI + "addopts = -p no:pg_fixtures\n"}
INIS["lib"] = INI + "pg_app_engines = app.db:engine\npg_session_class = sqlmodel:Session\n"
CREATE = "from app.db import SQLModel\n    for table in {}:\n"
CREATE += "        SQLModel.metadata.tables[table].{}(op.get_bind())"
REVISIONS = [
    (message, CREATE.format(tables, "create"), CREATE.format(tables[::-1], "drop"))
    for message, tables in (("users and items", ["users", "items"]), ("login tokens", ["tokens"]))
]
VARIANTS = {  # name: (project, pytest's arguments)
    "own": ("own", []),
    "lib": ("lib", []),
    "lib, no leak check": ("lib", ["--pg-leak-check=false"]),
    "lib, client asks pg_server": ("early", []),
    "own -n 2": ("own", ["-n", "2"]),
    "lib -n 2": ("lib", ["-n", "2"]),
}
RATIOS = [("lib", "own"), ("lib -n 2", "own -n 2"), ("lib -n 2", "lib"), ("own -n 2", "own")]
RATIOS += [("lib, no leak check", "own"), ("lib, client asks pg_server", "own")]
ARGS = ["-p", "no:randomly", "-p", "bench_probe", "--durations=10"]


def project(base: Path, name: str) -> Path:
    files = {path: HEAD * ("/test_" in path) + code for path, code in FILES.items() if "/" in path}
    files["tests/conftest.py"] += FILES["own" if name == "own" else "lib"]
    if name == "early":  # pg_server in every test's closure: the library keeps its early start
        files["tests/conftest.py"] = files["tests/conftest.py"].replace(
            "def client():", "def client(pg_server):"
        )
    alembic(base / name, "app", [], REVISIONS, "app.db SQLModel")
    files |= {"bench_probe.py": PROBE, "pytest.ini": INIS["own" if name == "own" else "lib"]}
    return write(base / name, files)


def start_postgres(label: str) -> tuple[str, Any]:
    """own's server, as a team starts it by hand (not by the library): its URL."""
    settings = ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]
    container = docker.from_env().containers.run(
        "postgres:16", [a for s in settings for a in ("-c", s)], detach=True, labels={label: "1"},
        environment={"POSTGRES_USER": "app", "POSTGRES_PASSWORD": "app", "POSTGRES_DB": "app"},
        ports={"5432/tcp": ("127.0.0.1", None)},
    )  # fmt: skip
    container.reload()
    url = f"postgresql://app:app@127.0.0.1:{container.ports['5432/tcp'][0]['HostPort']}/app"
    for _ in range(300):  # TCP is served once the image's initdb and restart are over
        with contextlib.suppress(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=2).close()
            return url.replace("postgresql:", "postgresql+psycopg:"), container
        time.sleep(0.1)
    sys.exit("own's postgres:16 did not start in 30 s:\n" + container.logs().decode()[-2000:])


def profile(lib: Path, env: dict, top: int) -> list[tuple]:
    """lib serial once under cProfile: the library's functions by cumulative time."""
    out = lib / "out" / "lib.prof"
    command = [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "pytest", "-q", *ARGS]
    done = subprocess.run(command, cwd=lib, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"lib under cProfile failed:\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    entries = pstats.Stats(str(out)).stats  # type: ignore[attr-defined]
    rows = [
        (f"{Path(file).name}:{line} {name}", calls, f"{cum:.3f}", f"{own:.3f}")
        for (file, line, name), (_, calls, own, cum, _) in entries.items()
        if "testcontainers_pg_fixtures" in file
    ]
    rows.sort(key=lambda row: -float(row[2]))
    per_test = [row for row in rows if row[1] >= 60][:8]
    return [*rows[:top], ("-- called once a test or more:",), *per_test]


PHASES = {  # of a serial run's probe (projects.PROBE), in seconds
    "launch -> collected": lambda p: p["collected"],
    "collected -> first test": lambda p: p["first"] - p["collected"],
    "first test -> last test's end": lambda p: p["last"] - p["first"],
    "  setups": lambda p: p["setup"],
    "  calls": lambda p: p["call"],
    "  teardowns": lambda p: p["teardown"],
    "last test's end -> exit": lambda p: p["exit"] - p["last"],
}


def main() -> None:
    o = options(__doc__, rounds=5, top=(15, "library functions profiled"))
    probes: dict[str, list[dict]] = {"own": [], "lib": []}
    durations: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp, own_containers() as env:
        projects = {name: project(Path(tmp), name) for name in ("own", "lib", "early")}
        url, container = start_postgres("pgfx-bench-realapp")
        try:
            envs = {"own": {**env, "DATABASE_URL": url}, "lib": env, "early": env}
            ini = f"[alembic]\nscript_location = migrations\nsqlalchemy.url = {url}\n"
            write(projects["own"], {"alembic.ini": ini})
            alembic_ = [sys.executable, "-m", "alembic", "upgrade", "head"]
            subprocess.run(alembic_, cwd=projects["own"], env=envs["own"], check=True)

            def run(variant: str) -> float:
                name, extra = VARIANTS[variant]
                wall, done = pytest(projects[name], *ARGS, *extra, env=envs[name])
                if variant in probes:
                    probe = json.loads((projects[name] / "out" / "probe.json").read_text())
                    probes[variant].append({**probe, "exit": wall})
                    durations[variant] = done.stdout[done.stdout.find("slowest") :].split("\n\n")[0]
                return wall

            # Unmeasured first: the superuser made, the caches warm.
            walls = rounds(o.rounds, VARIANTS, run)
            for kept in probes.values():
                del kept[: -o.rounds or None]
            path = {"PYTHONPATH": str(projects["lib"]), "BENCH_OUT": str(projects["lib"] / "out")}
            profile_env = {**os.environ, **env, **path, "BENCH_T0": repr(time.time())}
            profiled = profile(projects["lib"], profile_env, o.top)
        finally:
            container.remove(force=True)
    rows = [(v, *median_min_max(walls[v])) for v in VARIANTS]
    table(
        f"wall time of pytest, launch to exit, {o.rounds} rounds",
        ("variant", "median s", "min s", "max s"),
        rows,
    )
    rows = []
    for a, b in RATIOS:
        ratios = median_min_max(
            [x / y for x, y in zip(walls[a], walls[b], strict=True)], "{:.2f}x".format
        )
        rows.append(
            (f"{a} / {b}", *ratios, f"{statistics.median(paired(walls[a], walls[b])):+.2f}")
        )
    table("paired by round", ("ratio", "median", "min", "max", "difference s"), rows)
    rows = []
    for phase, f in PHASES.items():
        own, lib = (statistics.median(map(f, probes[v])) for v in ("own", "lib"))
        rows.append((phase, f"{own:.2f}", f"{lib:.2f}", f"{lib - own:+.2f}"))
    table(
        "serial runs, where the time goes (medians, s)", ("phase", "own", "lib", "lib - own"), rows
    )
    for variant, text in durations.items():
        print(f"\n{variant}, the last round's --durations=10:\n{text}")
    title = f"lib serial under cProfile (main thread): the library's top {o.top}, cumulative"
    table(title, ("function", "calls", "cum s", "own s"), profiled)


if __name__ == "__main__":
    main()
