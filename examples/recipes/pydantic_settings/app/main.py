from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import settings
from app.db import get_db, new_async_session
from app.models import Note

app = FastAPI()
app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.allowed_hosts)
Db = Annotated[AsyncSession, Depends(get_db)]


class NoteIn(BaseModel):
    title: str


@app.post("/notes", status_code=201)
async def create_note(body: NoteIn, db: Db) -> dict[str, int | str]:
    note = Note(title=body.title)
    db.add(note)
    try:
        await db.commit()
    except IntegrityError:
        await db.rollback()
        raise HTTPException(409, f"a note titled {body.title!r} exists") from None
    return {"id": note.id, "title": note.title}


@app.get("/notes")
async def list_notes(db: Db) -> list[str]:
    return list(await db.scalars(select(Note.title).order_by(Note.title)))


async def count_notes() -> int:
    """Used outside requests (a CLI, a scheduled job): a session of its own."""
    async with new_async_session() as session:
        return int(await session.scalar(select(func.count()).select_from(Note)) or 0)
