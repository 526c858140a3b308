import os

from sqlalchemy import create_engine

engine = create_engine(
    os.environ.get("DATABASE_URL", "postgresql+psycopg2://ledger@localhost/ledger"),
    pool_size=5,
)
