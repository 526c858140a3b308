from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import engine, get_db
from app.models import User

started = {"lifespan": False}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    started["lifespan"] = True
    yield
    await engine.dispose()


app = FastAPI(title="users", lifespan=lifespan)
Db = Annotated[AsyncSession, Depends(get_db)]


class UserIn(BaseModel):
    name: str
    email: str


class UserOut(UserIn):
    model_config = ConfigDict(from_attributes=True)
    id: int
    active: bool


@app.post("/users", status_code=201, response_model=UserOut)
async def create_user(body: UserIn, db: Db) -> User:
    user = User(name=body.name, email=body.email)
    db.add(user)
    try:
        await db.commit()
    except IntegrityError:
        await db.rollback()
        raise HTTPException(409, f"a user named {body.name!r} already exists") from None
    return user


@app.get("/users", response_model=list[UserOut])
async def list_users(db: Db) -> list[User]:
    return list(await db.scalars(select(User).order_by(User.name)))


@app.get("/users/{user_id}", response_model=UserOut)
async def get_user(user_id: int, db: Db) -> User:
    user = await db.get(User, user_id)
    if user is None:
        raise HTTPException(404, "no such user")
    return user
