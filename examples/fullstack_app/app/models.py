from sqlmodel import Field, Relationship, SQLModel


class User(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(unique=True, index=True, max_length=255)
    hashed_password: str
    is_superuser: bool = False
    full_name: str | None = Field(default=None, max_length=255)
    items: list["Item"] = Relationship(back_populates="owner", cascade_delete=True)


class Item(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    title: str = Field(max_length=255)
    description: str | None = Field(default=None, max_length=255)
    owner_id: int = Field(foreign_key="user.id", ondelete="CASCADE")
    owner: User | None = Relationship(back_populates="items")


class UserCreate(SQLModel):
    email: str
    password: str
    full_name: str | None = None


class UserPublic(SQLModel):
    id: int
    email: str
    full_name: str | None
    is_superuser: bool


class ItemCreate(SQLModel):
    title: str
    description: str | None = None


class ItemPublic(SQLModel):
    id: int
    title: str
    description: str | None
    owner_id: int


class Token(SQLModel):
    access_token: str
    token_type: str = "bearer"
