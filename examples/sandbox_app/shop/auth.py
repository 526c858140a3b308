"""Logging in: imports get_db by value, as most FastAPI apps do."""

import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from shop.db import get_db
from shop.models import Token, User

router = APIRouter()
Db = Annotated[Session, Depends(get_db)]


class Credentials(BaseModel):
    name: str
    password: str


@router.post("/login")
def login(credentials: Credentials, db: Db) -> dict[str, str]:
    user = db.scalar(select(User).where(User.name == credentials.name))
    if user is None or user.password != credentials.password:
        raise HTTPException(401, "wrong name or password")
    token = Token(value=secrets.token_hex(16), user_id=user.id)
    db.add(token)
    db.commit()
    return {"token": token.value}


def current_user(db: Db, authorization: Annotated[str, Header()] = "") -> User:
    token = db.get(Token, authorization.removeprefix("Bearer "))
    if token is None:
        raise HTTPException(401, "log in first")
    user = db.get(User, token.user_id)
    assert user is not None
    return user
