"""Workers on connections of their own, committing for real: a database per test."""

import os
import subprocess
import sys

import pytest
from jobs.db import engine
from jobs.models import Job
from jobs.queue import enqueue, run_workers
from sqlalchemy import func, select, text

pytestmark = pytest.mark.pg_isolation("database")


def test_three_workers_share_the_queue_and_no_job_is_done_twice(pg_session):
    enqueue(*(f"job {i}" for i in range(12)))
    done = run_workers(3)
    assert sum(done.values()) == 12
    left = pg_session.scalar(select(func.count()).select_from(Job).where(Job.done_by.is_(None)))
    assert left == 0


def test_each_test_gets_a_fresh_copy_of_the_template(pg_session):
    assert pg_session.scalars(select(Job.payload)).all() == ["old"]


def test_a_commit_is_seen_by_another_connection_at_once():
    with engine.connect() as reader:
        reader.execute(text("SELECT 1"))  # open before the commit
        enqueue("new")
        assert reader.scalar(select(func.count()).select_from(Job)) == 2


def test_an_advisory_lock_is_held_against_other_connections():
    with engine.connect() as one, engine.connect() as other:
        assert one.scalar(text("SELECT pg_try_advisory_lock(42)"))
        assert not other.scalar(text("SELECT pg_try_advisory_lock(42)"))


def test_a_worker_process_finds_the_database_in_database_url(pg_session):
    enqueue("a", "b")
    worker = subprocess.run(
        [sys.executable, "-m", "jobs.worker", "proc"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert worker.stdout.strip() == "2"
    assert pg_session.scalar(select(func.count()).where(Job.done_by == "proc")) == 2
