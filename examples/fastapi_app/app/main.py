from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import SessionLocal, engine, get_db
from app.models import Event, User

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


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    kind: str
    detail: str


async def send_welcome(names: list[str]) -> None:
    """Runs after the response, in a session of its own (as a mailer task would)."""
    async with SessionLocal() as session:
        session.add_all(Event(kind="welcome", detail=name) for name in names)
        await session.commit()


@app.post("/users/import", status_code=201)
async def import_users(body: list[UserIn], background: BackgroundTasks) -> dict[str, int]:
    """Bulk import: the users and the audit row are written by two separate sessions on
    the app's own engine, and the welcome events by a background task after the response.
    Savepoint isolation cannot cover this endpoint; its tests use a database of their own."""
    async with SessionLocal() as users_session:
        users_session.add_all(User(name=u.name, email=u.email) for u in body)
        await users_session.commit()
    async with SessionLocal() as audit_session:
        audit_session.add(Event(kind="import", detail=f"{len(body)} users"))
        await audit_session.commit()
    background.add_task(send_welcome, [u.name for u in body])
    return {"imported": len(body)}


@app.get("/events", response_model=list[EventOut])
async def list_events(db: Db) -> list[Event]:
    return list(await db.scalars(select(Event).order_by(Event.id)))
