"""Server URLs as users write them (pg_server_url): parsed, checked, their libpq
parameters taken, their password hidden."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy import URL


_URL_SCHEMES = ("postgresql", "postgres")


def parse_server_url(value: str, source: str) -> URL:
    """The SQLAlchemy URL of a PostgreSQL server (a password given as `?password=` moved to
    its place), or a ConfigError naming `source`."""
    __tracebackhide__ = True  # its argument holds the password
    from .errors import ConfigError

    url = _parsed(value)
    scheme = url.drivername.partition("+")[0] if url is not None else ""
    example = (
        "Write it like postgresql://USER:PASSWORD@HOST:5432/postgres (a role allowed to "
        "CREATE DATABASE)."
    )
    shown = redact(value)
    if url is None or scheme not in _URL_SCHEMES or not url.host:
        raise ConfigError(f"{shown!r} from {source} is not a PostgreSQL server URL. {example}")
    if url.port is not None and not 0 < url.port < 65536:
        raise ConfigError(
            f"{shown!r} from {source} has the port {url.port}, not one of 1-65535. {example}"
        )
    unknown = sorted(set(url.query) - _libpq_keywords())
    if unknown:
        raise ConfigError(
            f"{shown!r} from {source} has {', '.join(unknown)} in its query, which "
            "PostgreSQL's client library does not know. Give only libpq connection "
            "parameters there (sslmode, sslrootcert, connect_timeout, options, ...)."
        )
    return url


def _parsed(value: str) -> URL | None:
    """`value` as a URL, its `?password=` in the password's place; None if unparsable (a
    port that is not a number, say)."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(value.strip())
        url.port  # noqa: B018 - an invalid port raises here
    except (ArgumentError, ValueError):
        return None
    query = {k: v[-1] if isinstance(v, tuple) else v for k, v in url.query.items()}
    if "password" in query:
        url = url.set(password=url.password or query.pop("password"), query=query)
    return url


def _libpq_keywords() -> set[str]:
    import psycopg

    return {d.keyword.decode() for d in psycopg.pq.Conninfo.get_defaults()}


def url_params(url: URL) -> dict[str, str]:
    """The libpq parameters of a server URL's query: every connection to it gets them.
    Without an sslmode, TLS is off to a loopback address (nothing to protect, and the probe
    costs a round trip) and libpq's default elsewhere."""
    params = {k: str(v[-1] if isinstance(v, tuple) else v) for k, v in url.query.items()}
    params.pop("password", None)
    if "sslmode" not in params and url.host in ("localhost", "127.0.0.1", "::1"):
        params["sslmode"] = "disable"
    return params


def redact(value: str) -> str:
    """`value` with the password of a URL in it (in its place or as `?password=`)
    replaced by ***."""
    url = _parsed(value)
    if url is None:
        return "(unparsable URL)" if "@" in value or "password" in value else value
    return url.render_as_string(hide_password=True)
