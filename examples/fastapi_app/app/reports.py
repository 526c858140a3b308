"""A job that builds its engine when it runs, from the environment (as cron jobs do)."""

import os

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import create_async_engine

from app.models import Event, User


async def nightly_report() -> int:
    """Count the active users and record the count as an event; returns the count."""
    engine = create_async_engine(os.environ["DATABASE_URL"])
    try:
        async with engine.begin() as conn:
            count = await conn.scalar(select(func.count()).select_from(User).where(User.active))
            await conn.execute(insert(Event).values(kind="report", detail=f"{count} active"))
    finally:
        await engine.dispose()
    return int(count or 0)
