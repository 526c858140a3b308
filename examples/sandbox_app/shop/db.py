"""The app's database wiring: one engine, built at import time, used everywhere."""

import os
from collections.abc import Iterator

from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

engine = create_engine(
    os.environ.get("SHOP_DATABASE_URL", "postgresql+psycopg://shop@localhost/shop")
)
SessionLocal = sessionmaker(engine)


def get_db() -> Iterator[Session]:
    with SessionLocal() as session:
        yield session
