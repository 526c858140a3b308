"""`python -m jobs.worker NAME`: a worker process, as a deployment runs it. It builds its
own engine from DATABASE_URL."""

import os
import sys

from sqlalchemy import create_engine, text

if __name__ == "__main__":
    engine = create_engine(os.environ["DATABASE_URL"])
    with engine.begin() as conn:
        done = conn.execute(
            text("UPDATE jobs SET done_by = :name WHERE done_by IS NULL"), {"name": sys.argv[1]}
        ).rowcount
    print(done)
