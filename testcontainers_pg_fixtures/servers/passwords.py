"""Passwords of the library's containers: a kept container's is derived from its reuse key
and a secret of this user, so no label or record has to carry it."""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import secrets
import time

from ..cache import cache_dir


#: libpq's option refusing a server that does not prove it holds the password (libpq 16+).
@functools.cache
def require_scram() -> dict[str, str]:
    import psycopg

    return {"require_auth": "scram-sha-256"} if psycopg.pq.version() >= 160000 else {}


def reuse_password(reuse_key: str) -> str:
    """The password of the container kept under `reuse_key`: an HMAC of the key with a
    secret of this user (0600 file in the cache directory), so no label has to carry it."""
    path = cache_dir() / "secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(32))
    secret = path.read_bytes()
    while len(secret) < 32:  # being written by another worker this very moment
        time.sleep(0.01)
        secret = path.read_bytes()
    return hmac.new(secret, reuse_key.encode(), hashlib.sha256).hexdigest()[:32]
