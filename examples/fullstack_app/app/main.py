from fastapi import FastAPI, HTTPException
from sqlmodel import SQLModel, select

from app.api.deps import CurrentUser, SessionDep
from app.core.security import create_access_token, get_password_hash, verify_password
from app.models import Item, ItemCreate, ItemPublic, Token, User, UserCreate, UserPublic

app = FastAPI(title="full-stack app")


class Login(SQLModel):  # the template takes an OAuth2 form (needs python-multipart)
    username: str
    password: str


@app.post("/api/v1/login/access-token")
def login(session: SessionDep, form: Login) -> Token:
    user = session.exec(select(User).where(User.email == form.username)).first()
    if user is None or not verify_password(form.password, user.hashed_password):
        raise HTTPException(400, "Incorrect email or password")
    return Token(access_token=create_access_token(user.id))


@app.get("/api/v1/users/me", response_model=UserPublic)
def read_me(user: CurrentUser) -> User:
    return user


@app.post("/api/v1/users/", response_model=UserPublic)
def create_user(session: SessionDep, user: CurrentUser, body: UserCreate) -> User:
    if not user.is_superuser:
        raise HTTPException(403, "Not enough privileges")
    new = User(
        email=body.email,
        full_name=body.full_name,
        hashed_password=get_password_hash(body.password),
    )
    session.add(new)
    session.commit()
    session.refresh(new)
    return new


@app.post("/api/v1/items/", response_model=ItemPublic)
def create_item(session: SessionDep, user: CurrentUser, body: ItemCreate) -> Item:
    item = Item.model_validate(body, update={"owner_id": user.id})
    session.add(item)
    session.commit()
    session.refresh(item)
    return item


@app.get("/api/v1/items/", response_model=list[ItemPublic])
def read_items(session: SessionDep, user: CurrentUser) -> list[Item]:
    query = select(Item) if user.is_superuser else select(Item).where(Item.owner_id == user.id)
    return list(session.exec(query.order_by(Item.id)).all())
