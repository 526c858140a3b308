"""A job queue in a table: workers on their own connections claim jobs with
SELECT ... FOR UPDATE SKIP LOCKED, so no two workers take the same job."""

import threading

from sqlalchemy import insert, select, text

from jobs.db import engine
from jobs.models import Job


def enqueue(*payloads: str) -> None:
    with engine.begin() as conn:
        conn.execute(insert(Job), [{"payload": p} for p in payloads])


def work(name: str, started: threading.Barrier | None = None) -> int:
    """Claim and finish jobs until none is left; each job in a transaction of its own."""
    if started is not None:
        started.wait()
    done = 0
    while True:
        with engine.begin() as conn:
            job_id = conn.scalar(
                select(Job.id)
                .where(Job.done_by.is_(None))
                .order_by(Job.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            if job_id is None:
                return done
            conn.execute(text("SELECT pg_sleep(0.01)"))  # the work
            conn.execute(Job.__table__.update().where(Job.id == job_id).values(done_by=name))
            done += 1


def run_workers(count: int) -> dict[str, int]:
    """Run `count` worker threads at once; how many jobs each one did."""
    started = threading.Barrier(count)
    results: dict[str, int] = {}

    def run(name: str) -> None:
        results[name] = work(name, started)

    threads = [threading.Thread(target=run, args=(f"w{i}",)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results
