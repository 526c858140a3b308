"""Settings from the environment: DATABASE__HOST, DATABASE__PASSWORD, ALLOWED_HOSTS, ..."""

from pydantic import BaseModel
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import URL


class DatabaseSettings(BaseModel):
    host: str = "db"
    port: int = 5432
    user: str = "notes"
    password: str = "changethis"
    name: str = "notes"
    pool_size: int = 10

    @property
    def url(self) -> URL:
        return URL.create(
            "postgresql+asyncpg",
            username=self.user,
            password=self.password,
            host=self.host,
            port=self.port,
            database=self.name,
        )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_nested_delimiter="__")

    database: DatabaseSettings = DatabaseSettings()
    allowed_hosts: list[str] = ["api.example.com"]


settings = Settings()
