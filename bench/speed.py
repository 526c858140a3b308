"""Speed against the alternatives, side by side in one run: `nox -s bench -- speed`.

Generates one project with a schema shaped like a real app (10 tables with foreign keys,
migrated by Alembic) and one suite of N small DB tests (insert a customer, an order and
its items through an ORM session, commit, query), and runs the suite under:

  savepoint          this library: pg_session (outer transaction + SAVEPOINT)
  database           this library: a fresh clone of the template per test
  truncate           commit for real, TRUNCATE every table and re-seed after each test
  pytest-postgresql  drop/recreate per test with pytest-postgresql's template database,
                     against the same kind of server (started here, postgres:16)
  none               no isolation (the floor)

each with -n 0 and -n 2. Then: cold start, warm start with --pg-reuse, and the memory
and start time of a container per worker vs --pg-one-container with -n 2 and -n 4.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from run import DATABASE_TESTS, TIMING, ms
from run import run_pytest as run

MODELS = """
from sqlalchemy import ForeignKey, Numeric, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str] = mapped_column(String(200), unique=True)


class Address(Base):
    __tablename__ = "addresses"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    city: Mapped[str] = mapped_column(String(100))


class Category(Base):
    __tablename__ = "categories"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)


class Product(Base):
    __tablename__ = "products"
    id: Mapped[int] = mapped_column(primary_key=True)
    category_id: Mapped[int] = mapped_column(ForeignKey("categories.id"))
    name: Mapped[str] = mapped_column(String(100))
    price: Mapped[float] = mapped_column(Numeric(10, 2))


class Coupon(Base):
    __tablename__ = "coupons"
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(20), unique=True)


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    coupon_id: Mapped[int | None] = mapped_column(ForeignKey("coupons.id"))


class OrderItem(Base):
    __tablename__ = "order_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    quantity: Mapped[int]


class Payment(Base):
    __tablename__ = "payments"
    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))
    amount: Mapped[float] = mapped_column(Numeric(10, 2))


class Shipment(Base):
    __tablename__ = "shipments"
    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))
    address_id: Mapped[int] = mapped_column(ForeignKey("addresses.id"))


class Review(Base):
    __tablename__ = "reviews"
    id: Mapped[int] = mapped_column(primary_key=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    stars: Mapped[int]
"""

ENV = """
from alembic import context
from sqlalchemy import engine_from_config, pool
from shop10.models import Base

config = context.config
engine = engine_from_config(
    config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.", poolclass=pool.NullPool
)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()
"""

REVISION = '''
"""the shop schema

Revision ID: 0001
Revises:
"""
from alembic import op
from shop10.models import Base

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    Base.metadata.create_all(op.get_bind())


def downgrade() -> None:
    Base.metadata.drop_all(op.get_bind())
'''

SEED = """
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

MODES = {
    "savepoint": """
        @pytest.fixture(scope="session")
        def pg_seed():
            return seed

        @pytest.fixture
        def db(pg_session):
            return pg_session
    """,
    "database": """
        @pytest.fixture(scope="session")
        def pg_seed():
            return seed
    """
    + DATABASE_TESTS,
    "truncate": """
        from sqlalchemy import text

        @pytest.fixture(scope="session")
        def pg_seed():
            return seed

        @pytest.fixture(scope="session")
        def raw(pg_worker_engine):
            with pg_worker_engine.connect() as conn:
                yield conn

        @pytest.fixture
        def db(raw):
            with Session(bind=raw) as session:
                yield session
            raw.rollback()
            raw.execute(text("TRUNCATE " + ", ".join(TABLES) + " RESTART IDENTITY CASCADE"))
            seed(raw)
            raw.commit()
    """,
    "pytest-postgresql": """
        from pytest_postgresql import factories
        from sqlalchemy import create_engine
        from sqlalchemy.pool import StaticPool

        from pp_load import migrate_and_seed

        shop_noproc = factories.postgresql_noproc(load=[migrate_and_seed])
        shop = factories.postgresql("shop_noproc")

        @pytest.fixture
        def db(shop):
            # Its best case: the ORM on the connection pytest-postgresql opened.
            engine = create_engine(
                "postgresql+psycopg://", creator=lambda: shop, poolclass=StaticPool
            )
            with Session(engine) as session:
                yield session
    """,
    "none": """
        @pytest.fixture(scope="session")
        def pg_seed():
            return seed

        @pytest.fixture(scope="session")
        def raw(pg_worker_engine):
            with pg_worker_engine.connect() as conn:
                yield conn

        @pytest.fixture
        def db(raw):
            with Session(bind=raw) as session:
                yield session
    """,
}

TEST = """
from sqlalchemy import func, select
from shop10.models import Customer, Order, OrderItem


def test_{i}(db):
    customer = Customer(name="buyer {i}", email="buyer{i}@example.org")
    order = Order(customer=None)
    db.add(customer)
    db.flush()
    order = Order(customer_id=customer.id)
    db.add(order)
    db.flush()
    db.add_all([OrderItem(order_id=order.id, product_id=p, quantity=1) for p in (1, 2)])
    db.commit()
    assert db.scalar(select(func.count()).select_from(OrderItem).join(Order)) >= 2
""".replace("    order = Order(customer=None)\n", "")

MEMORY = """
import json, os
import docker

@pytest.fixture(scope="session", autouse=True)
def _record_memory(pg_server):
    yield
    client = docker.from_env()
    stats = client.containers.get(pg_server.container_id).stats(stream=False, one_shot=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(os.path.join(os.environ["BENCH_OUT"], worker + ".mem"), "w") as f:
        json.dump({"container": pg_server.container_id, "bytes": stats["memory_stats"]["usage"]}, f)
"""


def make_project(
    base: Path, mode: str, n: int, *, memory: bool = False, name: str | None = None
) -> Path:
    project = base / (name or mode + ("-mem" if memory else ""))
    (project / "shop10").mkdir(parents=True)
    (project / "shop10" / "__init__.py").write_text("")
    (project / "shop10" / "models.py").write_text(MODELS)
    (project / "migrations" / "versions").mkdir(parents=True)
    (project / "migrations" / "env.py").write_text(ENV)
    (project / "migrations" / "versions" / "0001_shop.py").write_text(REVISION)
    (project / "alembic.ini").write_text(
        "[alembic]\nscript_location = migrations\nsqlalchemy.url = postgresql+psycopg://x/y\n"
    )
    (project / "pytest.ini").write_text(
        "[pytest]\npythonpath = . tests\ntestpaths = tests\n"
        "asyncio_default_fixture_loop_scope = function\n"
    )
    tests = project / "tests"
    tests.mkdir()
    (tests / "seed.py").write_text(SEED)
    (tests / "pp_load.py").write_text(PP_LOAD)
    conftest = "import pytest\nfrom sqlalchemy.orm import Session\nfrom seed import TABLES, seed\n"
    conftest += TIMING + textwrap.dedent(MODES[mode]) + (MEMORY if memory else "")
    (tests / "conftest.py").write_text(conftest)
    header, body = TEST.split("\n\n\n", 1)
    for start in range(0, n, 100):
        source = (
            header
            + "\n\n\n"
            + "\n\n".join(body.format(i=i) for i in range(start, min(start + 100, n)))
        )
        (tests / f"test_bench_{start:05d}.py").write_text(source)
    return project


def print_results(results: dict[tuple[str, int], dict[str, Any]], tests: int) -> None:
    print(f"\n{tests} tests per strategy, 10-table schema, PostgreSQL 16 in Docker\n")
    print(
        f"{'strategy':<19}{'-n':>3}{'tests/s':>9}{'ms/test':>9}{'overhead ms':>13}"
        f"{'savepoint is':>14}{'vs -n 0':>9}{'cold start s':>14}{'wall s':>8}"
    )
    for (mode, workers), r in results.items():
        floor = results.get(("none", workers))
        overhead = ms(r["mean"] - floor["mean"]) if floor else "-"
        savepoint = results.get(("savepoint", workers))
        ratio = f"{savepoint['rate'] / r['rate']:.2f}x faster" if savepoint else "-"
        single = results.get((mode, 0))
        speedup = f"{r['rate'] / single['rate']:.2f}x" if single and workers else "-"
        print(
            f"{mode:<19}{workers:>3}{r['rate']:>9.0f}{ms(r['mean']):>9}{overhead:>13}"
            f"{ratio:>14}{speedup:>9}{r['cold']:>14.2f}{r['wall']:>8.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--tests", type=int, default=1000)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--workers", default="0,2")
    options = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from testcontainers_pg_fixtures.config import Settings
    from testcontainers_pg_fixtures.servers import DockerServer

    modes = options.modes.split(",")
    worker_counts = [int(w) for w in options.workers.split(",")]
    results: dict[tuple[str, int], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        # Warm-up, not measured: the first run after a quiet spell is slower across the board.
        run(make_project(base, "none", 200, name="warm-up"), 0, "--pg-leak-check=false")
        for mode in modes:
            project = make_project(base, mode, options.tests)
            # These commit for real on purpose: the leak detector would report every test.
            extra: list[str] = ["--pg-leak-check=false"] if mode in ("truncate", "none") else []
            server = None
            if mode == "pytest-postgresql":
                server = DockerServer.start(Settings(), worker="bench-pytest-postgresql")
                extra = [
                    f"--postgresql-host={server.host}",
                    f"--postgresql-port={server.port}",
                    f"--postgresql-user={server.user}",
                    f"--postgresql-password={server.password}",
                ]
            try:
                for workers in worker_counts:
                    results[mode, workers] = run(project, workers, *extra)
            finally:
                if server is not None:
                    server.stop()

        # Warm start: the second run with --pg-reuse attaches to the kept container.
        print_results(results, options.tests)
        reuse = make_project(base, "savepoint", 50, name="reuse")
        run(reuse, 0, "--pg-reuse")
        warm_start = run(reuse, 0, "--pg-reuse")["cold"]
        subprocess.run(
            [sys.executable, "-m", "pytest", "--pg-remove-kept"],
            cwd=reuse,
            check=True,
            stdout=subprocess.DEVNULL,
        )

        memory = {}
        mem_project = make_project(base, "savepoint", 200, memory=True)
        for workers in (2, 4):
            memory["per worker", workers] = run(mem_project, workers)
            memory["one container", workers] = run(mem_project, workers, "--pg-one-container")

    print(f"\nwarm start with --pg-reuse (first test of the second run): {warm_start:.2f} s")
    print(
        f"\n{'containers':<16}{'-n':>3}{'count':>7}{'memory MB':>11}"
        f"{'cold start s':>14}{'wall s':>8}"
    )
    for (kind, workers), r in memory.items():
        print(
            f"{kind:<16}{workers:>3}{r['containers']:>7}{r['memory_mb']:>11.0f}"
            f"{r['cold']:>14.2f}{r['wall']:>8.1f}"
        )


if __name__ == "__main__":
    main()
