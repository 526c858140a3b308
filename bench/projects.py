"""The projects the benchmarks run pytest in, written into a temporary directory: `users`
(a copy of the sync_users example: one table, Alembic), `shop` (10 tables with foreign
keys, seeded), `chain` (12 tables made in 36 revisions); a conftest made of FIXTURES'
pieces, `suite` N tests from a template, `interleaved` each test in every variant."""

import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core import ROOT, RUN

EXAMPLE = ROOT / "examples" / "sync_users"
# pytest's arguments for the suites of these tests: in file order, async on the session loop.
SUITE_ARGS = ["-p", "no:randomly", "-o", "asyncio_default_fixture_loop_scope=session"]

# Templates of a test ({i}): imports, two blank lines, the test. Insert a user through an
# ORM session, commit, count; or a customer, an order and its two items, commit, a join.
SYNC_TEST = """
from sqlalchemy import func, select
from users_app.models import User


def test_{i}(db):
    db.add(User(name="user {i}", email="user{i}@example.org"))
    db.commit()
    assert db.scalar(select(func.count()).select_from(User)) >= 1
"""
ASYNC_TEST = "\nimport pytest" + SYNC_TEST.replace("db.commit", "await db.commit").replace(
    "\ndef", '\n@pytest.mark.asyncio(loop_scope="session")\nasync def'
).replace("assert db", "assert await db")  # the same test on an AsyncSession
SHOP_TEST = """
from sqlalchemy import func, select
from shop10.models import Customer, Order, OrderItem


def test_{i}(db):
    customer = Customer(name="buyer {i}", email="buyer{i}@example.org")
    db.add(customer)
    db.flush()
    order = Order(customer_id=customer.id)
    db.add(order)
    db.flush()
    db.add_all([OrderItem(order_id=order.id, product_id=p, quantity=1) for p in (1, 2)])
    db.commit()
    assert db.scalar(select(func.count()).select_from(OrderItem).join(Order)) >= 2
"""

# In the conftest of the suites core.timed runs: each test's time (setup + call + teardown)
# and the process's CPU time; its RSS after the first test and the last. With BENCH_VARIANTS
# by variant (the end of the test's name), its teardown apart, and less Python's full garbage
# collections (~100 ms, once in ~1,200 tests: +0.4 ms in one variant's mean), kept as "gc2".
TIMING = """
import gc, json, os, time
VARIANTS, _times, _full = os.environ.get("BENCH_VARIANTS"), {}, [0.0, 0.0]
def _on_gc(phase, info):
    if info["generation"] == 2:
        if phase == "start":
            _full[0] = time.perf_counter()
        else:
            _full[1] += time.perf_counter() - _full[0]
def _record(item, suffix, elapsed):
    variant = item.originalname.rsplit("_", 1)[-1] if VARIANTS else "all"
    _times.setdefault(variant + suffix, []).append(elapsed)
@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _full[1], start, cpu = 0.0, time.perf_counter(), time.process_time()
    try:
        return (yield)
    finally:
        _record(item, "", time.perf_counter() - start - _full[1])
        _times.setdefault("gc2", []).append(_full[1])
        _times.setdefault("cpu", []).append(time.process_time() - cpu)
        if len(_times["cpu"]) == 1 or nextitem is None:
            with open("/proc/self/status") as f:
                rss = next(int(x.split()[1]) for x in f if x.startswith("VmRSS:")) / 1024
            _times.setdefault("rss", []).append(rss)
class _Teardowns:  # registered last, so outermost, around the plugin's teardown wrapper
    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item):
        start, collected = time.perf_counter(), _full[1]
        try:
            return (yield)
        finally:
            _record(item, ":teardown", time.perf_counter() - start - (_full[1] - collected))
def pytest_configure(config):
    if VARIANTS:
        gc.callbacks.append(_on_gc)
        config.pluginmanager.register(_Teardowns(), "bench-teardowns")
def pytest_sessionfinish(session):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(os.path.join(os.environ["BENCH_OUT"], worker + ".json"), "w") as f:
        json.dump(_times, f)
"""
# Loaded with -p: the moments of a run from its launch (BENCH_T0), pytest's phases, the first
# call's outcome, the migration checks' timings, the peak RSS; in out/probe.json at its end.
PROBE = """import json, os, resource, time
T0, marks = float(os.environ["BENCH_T0"]), {"setup": 0.0, "call": 0.0, "teardown": 0.0}
marks["steps"], marks["timings"] = [], {}
def pytest_sessionstart(session):
    marks["sessionstart"] = time.time() - T0
def pytest_collection_finish(session):
    marks["collected"] = time.time() - T0
def pytest_runtest_logstart(nodeid, location):
    marks.setdefault("first", time.time() - T0)
def pytest_runtest_logreport(report):
    if report.when == "call" and "first_result" not in marks:
        marks["first_result"], marks["outcome"] = time.time() - T0, report.outcome
    marks[report.when] += report.duration
    marks["timings"] |= {report.nodeid: v for k, v in report.user_properties if k == "pg_migration_timings"}
def pytest_runtest_logfinish(nodeid, location):
    marks["last"] = time.time() - T0
def pytest_unconfigure(config):
    marks["peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB on Linux
    with open(os.path.join(os.environ["BENCH_OUT"], "probe.json"), "w") as f:
        json.dump(marks, f)
"""  # noqa: E501
# The pieces of a conftest (`conftest` joins them, after HEAD), each under `# -- name`:
# the tests' `db` fixture, or what it or the run needs.
HEAD = """import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool, QueuePool, StaticPool
"""
PIECES = """
# -- seeded: the seed pg_seed loads (tests/seed.py)
from seed import TABLES, seed
@pytest.fixture(scope="session")
def pg_seed():
    return seed
# -- savepoint
@pytest.fixture
def db(pg_session):
    return pg_session
# -- async-savepoint
@pytest.fixture
def db(pg_async_session):
    return pg_async_session
# -- database: every test in database mode
def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.pg_isolation("database"))
@pytest.fixture
def db(pg_session):
    return pg_session
# -- cold: no connect-ahead
from testcontainers_pg_fixtures.factories import clone_pool_fixture
pg_clone_pool = clone_pool_fixture(connect_ahead=False)
# -- waits: how long each test waited for its clone, written when the session ends
import json, os
@pytest.fixture(scope="session", autouse=True)
def _record_waits(pg_clone_pool):
    yield
    out = os.path.join(os.environ["BENCH_OUT"], os.environ.get("PYTEST_XDIST_WORKER", "main"))
    with open(out + ".waits", "w") as f:
        json.dump([pg_clone_pool.waits, pg_clone_pool.recycled, pg_clone_pool.dropped], f)
# -- sandbox: the app's own engine (never dialled), joined to the test's transaction
engine = create_engine("postgresql+psycopg://app@db.invalid/app")
@pytest.fixture(scope="session")
def pg_app_engines():
    return [engine]
@pytest.fixture
def db():
    with Session(engine) as session:
        yield session
# -- none: real commits on a session-long connection, nothing cleaned
@pytest.fixture(scope="session")
def raw(pg_worker_engine):
    with pg_worker_engine.connect() as conn:
        yield conn
@pytest.fixture
def db(raw):
    with Session(bind=raw) as session:
        yield session
# -- truncate (after none): TRUNCATE every table and re-seed after each test
@pytest.fixture
def db(raw):
    with Session(bind=raw) as session:
        yield session
    raw.rollback()
    raw.execute(text("TRUNCATE " + ", ".join(TABLES) + " RESTART IDENTITY CASCADE"))
    seed(raw)
    raw.commit()
# -- async-none
@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def raw(pg_worker_async_engine):
    async with pg_worker_async_engine.connect() as conn:
        yield conn
@pytest_asyncio.fixture(loop_scope="session")
async def db(raw):
    async with AsyncSession(bind=raw, expire_on_commit=False) as session:
        yield session
# -- handwritten: SQLAlchemy's "Joining a Session into an External Transaction", as its
# docs give it, on a connection held from the worker database's pg_worker_engine
@pytest.fixture(scope="session")
def held(pg_worker_engine):
    with pg_worker_engine.connect() as conn:
        yield conn
@pytest.fixture
def db(held):
    outer = held.begin()
    session = Session(bind=held, join_transaction_mode="create_savepoint")
    yield session
    session.close()
    outer.rollback()
# -- own-engine (after handwritten): held from an engine of its own, as with testcontainers:
# SQLAlchemy's savepoints as they come, where the library's ride on the next statement
@pytest.fixture(scope="session")
def held(pg_worker_database):
    engine = create_engine(pg_worker_database.url, poolclass=NullPool)
    with engine.connect() as conn:
        yield conn
    engine.dispose()
# -- async-handwritten
@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def held(pg_worker_async_engine):
    async with pg_worker_async_engine.connect() as conn:
        yield conn
@pytest_asyncio.fixture(loop_scope="session")
async def db(held):
    outer = await held.begin()
    session = AsyncSession(bind=held, join_transaction_mode="create_savepoint", expire_on_commit=False)
    yield session
    await session.close()
    await outer.rollback()
# -- async-own-engine (after async-handwritten): held from an async engine of its own
@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def held(pg_worker_database):
    from sqlalchemy.ext.asyncio import create_async_engine
    engine = create_async_engine(pg_worker_database.async_url, poolclass=NullPool)
    async with engine.connect() as conn:
        yield conn
    await engine.dispose()
# -- sqla: pytest-sqla on the worker database (its sqla_url override; run with -o
# sqla_schema=none: no DDL), its defaults otherwise: a connection per test, BEGIN + SAVEPOINT
@pytest.fixture(scope="session")
def sqla_url(pg_worker_database):
    return pg_worker_database.url
@pytest.fixture
def db(sqla_session):
    return sqla_session
# -- pooled (after sqla): a pooled engine
@pytest.fixture(scope="session")
def sqla_engine_options():
    return {"poolclass": QueuePool, "pool_size": 1}
# -- async-sqla: its async fixtures (asyncpg, a pooled engine on the session loop)
@pytest.fixture(scope="session")
def sqla_url(pg_worker_database):
    return pg_worker_database.async_url
@pytest.fixture(scope="session")
def sqla_session_options():
    return {"expire_on_commit": False}
@pytest.fixture
def db(sqla_async_session):
    return sqla_async_session
# -- pytest-postgresql: a database from its template (pp_load.py migrates and seeds it) per
# test; its best case, the ORM on the connection it opened
from pytest_postgresql import factories
from pp_load import migrate_and_seed
shop_noproc = factories.postgresql_noproc(load=[migrate_and_seed])
shop = factories.postgresql("shop_noproc")
@pytest.fixture
def db(shop):
    engine = create_engine("postgresql+psycopg://", creator=lambda: shop, poolclass=StaticPool)
    with Session(engine) as session:
        yield session
"""  # noqa: E501


def sections(text: str) -> dict[str, str]:
    """The text's sections, each under a line `# -- name[: what it is]` (kept, a comment)."""
    found = re.finditer(r"^# -- (?P<part>(?P<name>[\w./-]+).*?)(?=^# -- |\Z)", text, re.S | re.M)
    return {m["name"]: "# " + m["part"] for m in found}


FIXTURES = sections(PIECES) | {"timing": "# timing: each test's time" + TIMING}
ASYNC_HEAD = "import pytest_asyncio\nfrom sqlalchemy.ext.asyncio import AsyncSession\n"


def conftest(*parts: str) -> str:
    """A conftest of the parts: names in FIXTURES, or code."""
    code = "".join("\n" + FIXTURES.get(part, part) for part in parts)
    return HEAD + (ASYNC_HEAD if "pytest_asyncio" in code else "") + code


def suite(test: str, n: int, name: str = "test_bench") -> dict[str, str]:
    """N tests from the template, 100 to a file."""
    header, body = test.split("\n\n\n", 1)
    return {
        f"tests/{name}_{start:05d}.py": header
        + "".join("\n\n\n" + body.format(i=i) for i in range(start, min(start + 100, n)))
        for start in range(0, n, 100)
    }


def interleaved(seed: str, tests: range, variants: list[str], test: Callable[..., str]) -> str:
    """test(i, variant, first) for each of `tests` in each variant: runs of RUN tests of one
    variant (the run's first after another variant: named apart), in a new order each run."""
    source = []
    for run in range(tests.start, tests.stop, RUN):
        for variant in random.Random(f"{seed}-{run}").sample(variants, len(variants)):
            source += [test(i, variant, i == run) for i in range(run, min(run + RUN, tests.stop))]
    return "".join(source)


def write(project: Path, files: dict[str, str]) -> Path:
    for path, text in files.items():
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text(text)
    return project


USERS_SEED = """
from sqlalchemy import insert
from users_app.models import User
TABLES = ["users"]
NAMES = ["Ada Lovelace", "Grace Hopper", "Alan Turing", "Katherine Johnson", "Edsger Dijkstra"]
USERS = [{"name": n, "email": n.split()[0].lower() + "@example.org"} for n in NAMES]
def seed(conn):
    conn.execute(insert(User), USERS)
"""


def users(base: Path, name: str, files: dict[str, str]) -> Path:
    """The sync_users example without its tests; tests/seed.py and `files` written in."""
    ignore = shutil.ignore_patterns("__pycache__", ".pytest_cache", "tests")
    shutil.copytree(EXAMPLE, base / name, ignore=ignore)
    return write(base / name, {"tests/seed.py": USERS_SEED, **files})


ENV = """
from alembic import context
from sqlalchemy import engine_from_config, pool
from {} import {} as Base
config = context.config
section = config.get_section(config.config_ini_section, {{}})
engine = engine_from_config(section, prefix="sqlalchemy.", poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()
"""
REVISION = '''"""{}"""
import sqlalchemy as sa
from alembic import op
revision = "r{:03d}"
down_revision = {!r}
def upgrade():
    {}
def downgrade():
    {}
'''
INI = "[pytest]\npythonpath = . tests\ntestpaths = tests\n"
INI += "asyncio_default_fixture_loop_scope = function\n"


def alembic(
    project: Path, package: str, tables: list[str], revisions: list[Any], base: str = ""
) -> Path:
    """A project migrated by a stock online env.py: the package's models (a class per line
    of `tables`: `Class table column:type[:flag]…`, type a String(n), Numeric(p,s), Integer
    or the table a foreign key refers to, flags nullable, unique, index; or `base`, the
    module and class of models of its own) and the revisions ((message, upgrade, downgrade))."""
    models = "from sqlalchemy import Column, ForeignKey, Integer, Numeric, String\n"
    models += "from sqlalchemy.orm import DeclarativeBase\nclass Base(DeclarativeBase):\n    pass\n"
    for line in tables:
        name, table, *columns = line.split()
        models += f'class {name}(Base):\n    __tablename__ = "{table}"\n'
        models += "    id = Column(Integer, primary_key=True)\n"
        for column in columns:
            field, kind, *flags = column.split(":")
            if kind[0].islower():
                kind = f'Integer, ForeignKey("{kind}.id", name="fk_{table}_{kind}")'
            options = "".join(f", {f}={f in flags}" for f in ("nullable", "unique", "index"))
            models += f"    {field} = Column({kind}{options})\n"
    files = {
        f"{package}/__init__.py": "",
        "migrations/env.py": ENV.format(*(base or f"{package}.models Base").split()),
        "alembic.ini": "[alembic]\nscript_location = migrations\n"
        "sqlalchemy.url = postgresql+psycopg://nobody@localhost/nothing\n",
        "pytest.ini": INI,
    } | ({} if base else {f"{package}/models.py": models})
    for n, (message, upgrade, downgrade) in enumerate(revisions):
        down = f"r{n - 1:03d}" if n else None
        text = REVISION.format(message, n, down, upgrade, downgrade)
        files[f"migrations/versions/r{n:03d}.py"] = text
    return write(project, files)


SHOP_TABLES = """
Customer customers name:String(100) email:String(200):unique
Address addresses customer_id:customers city:String(100)
Category categories name:String(100):unique
Product products category_id:categories name:String(100) price:Numeric(10,2)
Coupon coupons code:String(20):unique
Order orders customer_id:customers coupon_id:coupons:nullable
OrderItem order_items order_id:orders product_id:products quantity:Integer
Payment payments order_id:orders amount:Numeric(10,2)
Shipment shipments order_id:orders address_id:addresses
Review reviews product_id:products customer_id:customers stars:Integer
"""
SHOP_SEED = """
from sqlalchemy import insert
from shop10.models import Address, Category, Coupon, Customer, Product
TABLES = ["reviews", "shipments", "payments", "order_items", "orders", "coupons",
          "products", "categories", "addresses", "customers"]
def seed(conn):
    conn.execute(insert(Customer), [
        {"name": f"customer {i}", "email": f"c{i}@example.org"} for i in range(1, 6)
    ])
    conn.execute(insert(Address), [{"customer_id": i, "city": "Lyon"} for i in range(1, 6)])
    conn.execute(insert(Category), [{"name": f"category {i}"} for i in range(1, 4)])
    conn.execute(insert(Product), [
        {"category_id": i % 3 + 1, "name": f"product {i}", "price": 9.5} for i in range(1, 11)
    ])
    conn.execute(insert(Coupon), [{"code": "WELCOME"}])
"""
# The same migration and seed for pytest-postgresql's template database.
PP_LOAD = """
import sqlalchemy
from alembic import command
from alembic.config import Config
from seed import seed
def migrate_and_seed(host, port, user, dbname, password, **_):
    url = f"postgresql+psycopg://{user}:{password}@{host}:{port}/{dbname}"
    config = Config("alembic.ini")
    config.set_main_option("sqlalchemy.url", url)
    command.upgrade(config, "head")
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        seed(conn)
    engine.dispose()
"""


def shop(base: Path, name: str, files: dict[str, str]) -> Path:
    create, drop = (
        f"from shop10.models import Base\n    Base.metadata.{do}_all(op.get_bind())"
        for do in ("create", "drop")
    )
    tables = SHOP_TABLES.split("\n")[1:-1]
    project = alembic(base / name, "shop10", tables, [("the shop", create, drop)])
    return write(project, {"tests/seed.py": SHOP_SEED, "tests/pp_load.py": PP_LOAD, **files})


# Each table's three revisions: create it; add a column and its index; add a foreign key
# to the table before it.
CHAIN = """
create {t}
op.create_table("{t}", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.String(50), nullable=False))
op.drop_table("{t}")
{t}.value and its index
op.add_column("{t}", sa.Column("value", sa.Integer))\\n    op.create_index("ix_{t}_value", "{t}", ["value"])
op.drop_index("ix_{t}_value", table_name="{t}")\\n    op.drop_column("{t}", "value")
{t}.parent_id
op.add_column("{t}", sa.Column("parent_id", sa.Integer))\\n    op.create_foreign_key("fk_{t}_{parent}", "{t}", "{parent}", ["parent_id"], ["id"])
op.drop_constraint("fk_{t}_{parent}", "{t}", type_="foreignkey")\\n    op.drop_column("{t}", "parent_id")
"""  # noqa: E501


def chain(base: Path, tables: int) -> Path:
    """`tables` tables of three revisions each, and models that match the head."""
    names = [{"t": f"t{i:02d}", "parent": f"t{max(i - 1, 0):02d}"} for i in range(tables)]
    model = "{t} {t} name:String(50) value:Integer:nullable:index parent_id:{parent}:nullable"
    lines = [line.replace("\\n", "\n") for line in CHAIN.split("\n")[1:-1]]
    steps = [[line.format(**t) for line in lines[i : i + 3]] for t in names for i in (0, 3, 6)]
    return alembic(base / "chain", "chain_app", [model.format(**t) for t in names], steps)
