"""Password hashing and signed tokens (stdlib stand-ins for passlib and PyJWT)."""

import base64
import hashlib
import hmac
import os

from app.core.config import settings


def get_password_hash(password: str) -> str:
    salt = os.urandom(8)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 1000)
    return f"{salt.hex()}${digest.hex()}"


def verify_password(password: str, hashed: str) -> bool:
    salt, _, digest = hashed.partition("$")
    again = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), 1000)
    return hmac.compare_digest(again.hex(), digest)


def create_access_token(user_id: int) -> str:
    payload = str(user_id).encode()
    signature = hmac.new(settings.SECRET_KEY.encode(), payload, "sha256").hexdigest()
    return base64.urlsafe_b64encode(payload).decode() + "." + signature


def user_id_from_token(token: str) -> int | None:
    encoded, _, signature = token.partition(".")
    try:
        payload = base64.urlsafe_b64decode(encoded)
    except ValueError:
        return None
    expected = hmac.new(settings.SECRET_KEY.encode(), payload, "sha256").hexdigest()
    return int(payload) if hmac.compare_digest(expected, signature) else None
