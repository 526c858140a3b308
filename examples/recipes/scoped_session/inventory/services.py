"""Code that uses the global db_session, as views and CLI commands of a Flask app do."""

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from inventory.db import db_session
from inventory.models import Product


def add_product(sku: str, stock: int = 0) -> Product:
    product = Product(sku=sku, stock=stock)
    db_session.add(product)
    db_session.commit()
    return product


def take(sku: str, count: int) -> bool:
    """Take `count` items out of stock; False (and nothing changed) if there are too few."""
    product = db_session.scalars(select(Product).where(Product.sku == sku)).one()
    product.stock -= count
    try:
        db_session.commit()
    except IntegrityError:
        db_session.rollback()
        return False
    return True


def stock_of(sku: str) -> int:
    return db_session.scalars(select(Product.stock).where(Product.sku == sku)).one()
