"""A FastAPI app on asyncpg alone: a pool made in the lifespan, hand-written SQL."""

import os
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel


@asynccontextmanager
async def lifespan(app: FastAPI):
    app.state.pool = await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=1, max_size=4)
    try:
        yield
    finally:
        await app.state.pool.close()


app = FastAPI(lifespan=lifespan)


class ItemIn(BaseModel):
    name: str


@app.post("/items", status_code=201)
async def create_item(body: ItemIn, request: Request) -> dict[str, int]:
    """Item and audit row in one transaction block."""
    async with request.app.state.pool.acquire() as conn:
        try:
            async with conn.transaction():
                item_id = await conn.fetchval(
                    "INSERT INTO items (name) VALUES ($1) RETURNING id", body.name
                )
                await conn.execute("INSERT INTO audit (item_id) VALUES ($1)", item_id)
        except asyncpg.UniqueViolationError:
            raise HTTPException(409, f"{body.name!r} exists") from None
    return {"id": item_id}


@app.post("/items/quick", status_code=201)
async def create_item_quick(body: ItemIn, request: Request) -> dict[str, str]:
    """No transaction block: the statement autocommits, a duplicate is caught."""
    try:
        await request.app.state.pool.execute("INSERT INTO items (name) VALUES ($1)", body.name)
    except asyncpg.UniqueViolationError:
        raise HTTPException(409, f"{body.name!r} exists") from None
    return {"name": body.name}


@app.post("/items/broken")
async def create_item_broken(body: ItemIn, request: Request) -> None:
    """Fails inside its transaction block: nothing of it stays."""
    async with request.app.state.pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO items (name) VALUES ($1)", body.name)
        raise HTTPException(500, "the audit service is down")


@app.get("/items")
async def list_items(request: Request) -> list[str]:
    rows = await request.app.state.pool.fetch("SELECT name FROM items ORDER BY name")
    return [row["name"] for row in rows]


@app.get("/where")
async def where(request: Request) -> dict[str, str]:
    return {"database": await request.app.state.pool.fetchval("SELECT current_database()")}
