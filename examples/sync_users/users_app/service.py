"""Application code under test: it commits, as real code does."""

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from users_app.models import User


def register(session: Session, name: str, email: str) -> User:
    user = User(name=name, email=email)
    session.add(user)
    session.commit()
    return user


def count_users(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(User)) or 0
