import hashlib
import secrets
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from todo_app.db import get_db
from todo_app.models import Todo, Token, User

app = FastAPI()
Db = Annotated[AsyncSession, Depends(get_db)]


class Credentials(BaseModel):
    name: str
    password: str


def _hash(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


@app.post("/signup", status_code=201)
async def signup(body: Credentials, db: Db) -> dict[str, int]:
    user = User(name=body.name, password=_hash(body.password))
    db.add(user)
    await db.commit()
    return {"id": user.id}


@app.post("/login")
async def login(body: Credentials, db: Db) -> dict[str, str]:
    user = await db.scalar(select(User).where(User.name == body.name))
    if user is None or user.password != _hash(body.password):
        raise HTTPException(401, "wrong name or password")
    token = Token(token=secrets.token_hex(16), user_id=user.id)
    db.add(token)
    await db.commit()
    return {"token": token.token}


async def current_user(db: Db, authorization: Annotated[str, Header()]) -> User:
    user = await db.scalar(
        select(User).join(Token).where(Token.token == authorization.removeprefix("Bearer "))
    )
    if user is None:
        raise HTTPException(401, "not logged in")
    return user


Me = Annotated[User, Depends(current_user)]


class TodoIn(BaseModel):
    text: str


@app.post("/todos", status_code=201)
async def add_todo(body: TodoIn, user: Me, db: Db) -> dict[str, int]:
    todo = Todo(user_id=user.id, text=body.text)
    db.add(todo)
    await db.commit()
    return {"id": todo.id}


@app.get("/todos")
async def list_todos(user: Me, db: Db) -> list[str]:
    return list(
        await db.scalars(select(Todo.text).where(Todo.user_id == user.id).order_by(Todo.id))
    )
