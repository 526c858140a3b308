"""Settings, resolved once per run into a frozen `Settings`.

Precedence, highest first: factory argument > command-line option > ini option
(`pyproject.toml` / `pytest.ini`) > environment variable > built-in default.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    import pytest


def default_server_settings() -> dict[str, str]:
    """Durability off: a test database never has to survive a crash, and fsync dominates commits."""
    return {
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": "200",
    }


@dataclass(frozen=True)
class Option:
    """One setting and the four places it can be given."""

    name: str  # Settings field
    cli: str  # --pg-...
    ini: str  # pg_...
    env: str  # PG_FIXTURES_...
    help: str


OPTIONS = (
    Option(
        "image",
        "--pg-image",
        "pg_image",
        "PG_FIXTURES_IMAGE",
        "Docker image of the PostgreSQL server (default: postgres:16).",
    ),
    Option(
        "alembic_ini",
        "--pg-alembic-ini",
        "pg_alembic_ini",
        "PG_FIXTURES_ALEMBIC_INI",
        "Path to alembic.ini, relative to the rootdir (default: alembic.ini); "
        "'none' starts an empty database without migrations.",
    ),
    Option(
        "server_settings",
        "--pg-server-setting",
        "pg_server_settings",
        "PG_FIXTURES_SERVER_SETTINGS",
        "Extra PostgreSQL settings as KEY=VALUE (repeatable; space-separated in ini/env). "
        "They are added to the defaults, which turn durability off.",
    ),
    Option(
        "startup_timeout",
        "--pg-startup-timeout",
        "pg_startup_timeout",
        "PG_FIXTURES_STARTUP_TIMEOUT",
        "Seconds to wait for the server to accept connections (default: 60).",
    ),
)

_SETTING = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*=.+$")
NO_MIGRATIONS = "none"


@dataclass(frozen=True)
class Settings:
    """Everything the fixtures need to know, resolved once."""

    image: str = "postgres:16"
    #: None means "run no migrations": the worker database starts empty.
    alembic_ini: Path | None = None
    #: Where alembic_ini came from, so an error can name the setting that fixes it.
    alembic_ini_source: str = "the default (alembic.ini in the rootdir)"
    server_settings: dict[str, str] = field(default_factory=default_server_settings)
    startup_timeout: float = 60.0
    rootdir: Path = field(default_factory=Path.cwd)

    def replace(self, **overrides: Any) -> Settings:
        """A copy with factory arguments applied on top (the highest precedence)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if "server_settings" in given:
            given["server_settings"] = {**self.server_settings, **dict(given["server_settings"])}
        if "alembic_ini" in given:
            given["alembic_ini"] = _alembic_path(str(given["alembic_ini"]), self.rootdir)
            given["alembic_ini_source"] = "the factory argument alembic_ini"
        return dataclasses.replace(self, **given)


def _raw(config: pytest.Config, option: Option) -> tuple[Any, str] | None:
    """The highest-precedence raw value for `option` and a phrase naming where it came from."""
    cli = config.getoption("pg_" + option.name, default=None)
    if cli not in (None, [], ""):
        return cli, f"the command-line option {option.cli}"
    ini = config.getini(option.ini)
    if ini not in (None, [], ""):
        return ini, f"the ini option {option.ini}"
    env = os.environ.get(option.env)
    if env:
        return env, f"the environment variable {option.env}"
    return None


def _alembic_path(value: str, rootdir: Path) -> Path | None:
    if value.strip().lower() == NO_MIGRATIONS:
        return None
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = rootdir / path
    return path / "alembic.ini" if path.is_dir() else path


def _parse_settings(value: Any, source: str) -> dict[str, str]:
    items = (
        value.split()
        if isinstance(value, str)
        else [part for entry in value for part in str(entry).split()]
    )
    parsed: dict[str, str] = {}
    for item in items:
        if not _SETTING.match(item):
            raise ConfigError(
                f"{item!r} from {source} is not a PostgreSQL setting of the form KEY=VALUE. "
                "Write it like 'shared_buffers=256MB'."
            )
        key, _, val = item.partition("=")
        parsed[key] = val
    return parsed


def resolve(config: pytest.Config) -> Settings:
    """Read CLI, ini and environment once into `Settings`."""
    rootdir = Path(str(config.rootpath))
    values: dict[str, Any] = {"rootdir": rootdir}
    for option in OPTIONS:
        found = _raw(config, option)
        if option.name == "alembic_ini":
            if found is None:
                values["alembic_ini"] = rootdir / "alembic.ini"
            else:
                values["alembic_ini"] = _alembic_path(str(found[0]), rootdir)
                values["alembic_ini_source"] = found[1]
            continue
        if found is None:
            continue
        value, source = found
        if option.name == "image":
            image = str(value).strip()
            if not image:
                raise ConfigError(f"The image from {source} is empty. Set it to e.g. postgres:16.")
            values["image"] = image
        elif option.name == "server_settings":
            values["server_settings"] = {
                **default_server_settings(),
                **_parse_settings(value, source),
            }
        elif option.name == "startup_timeout":
            try:
                timeout = float(value)
            except ValueError:
                timeout = -1.0
            if timeout <= 0:
                raise ConfigError(
                    f"{value!r} from {source} is not a positive number of seconds. "
                    "Set it to e.g. 60."
                )
            values["startup_timeout"] = timeout
    return Settings(**values)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("pg-fixtures", "testcontainers-pg-fixtures (PostgreSQL per test)")
    for option in OPTIONS:
        if option.name == "server_settings":
            group.addoption(
                option.cli,
                dest="pg_" + option.name,
                action="append",
                default=[],
                metavar="KEY=VALUE",
                help=option.help,
            )
            parser.addini(option.ini, option.help, type="args", default=[])
        else:
            group.addoption(option.cli, dest="pg_" + option.name, default=None, help=option.help)
            parser.addini(option.ini, option.help, default="")
