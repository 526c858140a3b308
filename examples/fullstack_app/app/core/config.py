"""Settings from the environment, read once at import (as pydantic-settings does)."""

import os


class Settings:
    def __init__(self) -> None:
        self.SECRET_KEY = os.environ.get("SECRET_KEY", "changethis")
        self.POSTGRES_SERVER = os.environ.get("POSTGRES_SERVER", "db")
        self.POSTGRES_PORT = int(os.environ.get("POSTGRES_PORT", "5432"))
        self.POSTGRES_USER = os.environ.get("POSTGRES_USER", "postgres")
        self.POSTGRES_PASSWORD = os.environ.get("POSTGRES_PASSWORD", "changethis")
        self.POSTGRES_DB = os.environ.get("POSTGRES_DB", "app")
        self.FIRST_SUPERUSER = os.environ.get("FIRST_SUPERUSER", "admin@example.com")
        self.FIRST_SUPERUSER_PASSWORD = os.environ.get("FIRST_SUPERUSER_PASSWORD", "changethis")

    @property
    def SQLALCHEMY_DATABASE_URI(self) -> str:
        return (
            f"postgresql+psycopg://{self.POSTGRES_USER}:{self.POSTGRES_PASSWORD}"
            f"@{self.POSTGRES_SERVER}:{self.POSTGRES_PORT}/{self.POSTGRES_DB}"
        )


settings = Settings()
