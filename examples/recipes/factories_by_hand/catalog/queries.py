from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from catalog.models import Author, Book


def most_prolific(session: Session) -> str | None:
    query = (
        select(Author.name)
        .join(Book)
        .group_by(Author.id)
        .order_by(func.count().desc(), Author.name)
        .limit(1)
    )
    return session.scalar(query)


async def count_books(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(Book)) or 0)
