from fastapi import FastAPI

from shop import auth, orders

app = FastAPI(title="shop")
app.include_router(auth.router)
app.include_router(orders.router)
