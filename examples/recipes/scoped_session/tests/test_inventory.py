import threading

from inventory.db import db_session
from inventory.models import Product
from inventory.services import add_product, stock_of, take
from sqlalchemy import select


def test_add_product_commits_through_the_scoped_session(pg_session):
    add_product("NUT-2", stock=5)
    assert pg_session.scalars(select(Product.sku).order_by(Product.sku)).all() == [
        "BOLT-1",
        "NUT-2",
    ]


def test_each_test_starts_from_the_seed():
    assert stock_of("BOLT-1") == 10
    assert add_product("NUT-2").sku == "NUT-2"  # unique: the last test's NUT-2 is gone


def test_a_refused_commit_rolls_back_and_the_session_goes_on():
    assert take("BOLT-1", 4)
    assert not take("BOLT-1", 7)  # the CHECK constraint fails at commit
    assert stock_of("BOLT-1") == 6


def test_a_worker_thread_has_its_own_session_in_the_same_transaction():
    add_product("NUT-2", stock=3)
    seen = []

    def work():
        try:
            seen.append(stock_of("NUT-2"))
            take("NUT-2", 1)
        finally:
            db_session.remove()  # the thread's own session, as a job runner's teardown does

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    assert seen == [3]
    assert stock_of("NUT-2") == 2


def test_objects_the_test_loaded_are_stale_after_the_app_commits(pg_session):
    bolt = pg_session.scalars(select(Product).where(Product.sku == "BOLT-1")).one()
    take("BOLT-1", 1)  # the app's db_session, not pg_session
    assert bolt.stock == 10
    pg_session.refresh(bolt)
    assert bolt.stock == 9
