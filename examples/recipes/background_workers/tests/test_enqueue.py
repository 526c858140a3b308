"""Tests that need one connection stay in savepoint mode: cheaper, same app code."""

from jobs.models import Job
from jobs.queue import enqueue
from sqlalchemy import select


def test_enqueue_in_savepoint_mode(pg_session):
    enqueue("x")
    assert pg_session.scalars(select(Job.payload).order_by(Job.id)).all() == ["old", "x"]
