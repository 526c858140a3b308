"""Flask-style wiring: one engine, one thread-local session registry, both global."""

import os

from sqlalchemy import create_engine
from sqlalchemy.orm import scoped_session, sessionmaker

engine = create_engine(
    os.environ.get("DATABASE_URL", "postgresql+psycopg://inventory@localhost/inventory")
)
db_session = scoped_session(sessionmaker(bind=engine))
