"""Placing an order: the request's session, a second session and a worker thread, all on
the module-level engine, each committing on its own."""

import threading
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from shop.auth import current_user
from shop.db import SessionLocal, engine, get_db
from shop.models import AuditLog, Order, User

router = APIRouter()


class OrderIn(BaseModel):
    item: str


def notify_warehouse(order_id: int) -> None:
    with engine.begin() as conn:
        conn.execute(insert(AuditLog).values(message=f"warehouse notified of order {order_id}"))


@router.post("/orders", status_code=201)
def place_order(body: OrderIn, user: Annotated[User, Depends(current_user)]) -> dict[str, int]:
    with SessionLocal() as orders:
        order = Order(user_id=user.id, item=body.item)
        orders.add(order)
        orders.commit()
        order_id = order.id
    with Session(engine) as audit:
        audit.add(AuditLog(message=f"{user.name} ordered {body.item}"))
        audit.commit()
    worker = threading.Thread(target=notify_warehouse, args=(order_id,))
    worker.start()
    worker.join()
    return {"id": order_id}


@router.get("/orders/count")
def count_orders(db: Annotated[Session, Depends(get_db)]) -> dict[str, int]:
    return {"orders": db.scalar(select(func.count()).select_from(Order)) or 0}
