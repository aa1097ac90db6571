"""JWT secret, API keys and token verification for the local stack.

The stack signs everything HS256 with one secret, like a Supabase project with a legacy JWT
secret. Verification returns the real Realtime server's error texts (see
shared/docs/realtime-protocol.md §1.3 and §3.5, from ``jwt_verification.ex`` and
``realtime_channel.ex``), so callers can put them on the wire unchanged.
"""

from __future__ import annotations

import json
import math
import secrets
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

# Lifetime of the anon and service-role keys Supabase issues (about ten years).
API_KEY_LIFETIME_S = 10 * 365 * 24 * 3600


class TokenError(Exception):
    """A token failed verification. ``code`` is the Realtime join-error code and ``text`` the
    message; ``str()`` gives ``text``."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text

    @property
    def reason(self) -> str:
        """The join-reply reason, ``"Code: text"``."""
        return f"{self.code}: {self.text}"


def _clean(token: str) -> str:
    # The real server strips whitespace and URL-decodes before verifying.
    return urllib.parse.unquote("".join(token.split()))


def verify(token: object, secret: str, *, now: float | None = None) -> dict[str, Any]:
    """Verify ``token`` and return its claims, or raise :class:`TokenError`.

    Requires a valid HS256/384/512 signature with ``secret``, ``role`` and ``exp`` claims, and
    ``exp`` in the future.
    """
    if not isinstance(token, str):
        raise TokenError("MalformedJWT", "The token provided is not a valid JWT")
    token = _clean(token)
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise TokenError("MalformedJWT", "The token provided is not a valid JWT") from exc
    alg = header.get("alg")
    if alg not in ("HS256", "HS384", "HS512"):
        raise TokenError("JwtSignerError", "Failed to generate JWT signer")
    try:
        jwt.decode(
            token,
            secret,
            algorithms=[alg],
            options={"verify_exp": False, "verify_aud": False, "verify_iat": False,
                     "verify_nbf": False},
        )
    except jwt.InvalidSignatureError as exc:
        raise TokenError("JwtSignatureError", "Failed to validate JWT signature") from exc
    except jwt.PyJWTError as exc:
        raise TokenError("MalformedJWT", "The token provided is not a valid JWT") from exc
    if not isinstance(claims, dict) or "role" not in claims or "exp" not in claims:
        raise TokenError("InvalidJWTToken", "Fields `role` and `exp` are required in JWT")
    exp = claims["exp"]
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise TokenError("InvalidJWTToken", "Token expiration time is invalid")
    now = time.time() if now is None else now
    if round(exp) <= now:
        seconds = expired_for(claims, now)
        raise TokenError("InvalidJWTToken", f"Token has expired {seconds} seconds ago")
    return claims


def expired_for(claims: dict[str, Any], now: float | None = None) -> int:
    """Whole seconds since ``exp`` (0 if not yet expired)."""
    now = time.time() if now is None else now
    exp = round(float(claims["exp"]))
    return max(0, math.floor(now - exp))


def sign(claims: dict[str, Any], secret: str) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


@dataclass(frozen=True)
class StackKeys:
    """The secret and the two API keys of one stack."""

    jwt_secret: str
    anon_key: str
    service_role_key: str

    @classmethod
    def generate(cls, secret: str | None = None) -> StackKeys:
        secret = secret or secrets.token_urlsafe(48)
        now = int(time.time())
        base = {"iss": "supabase-demo", "iat": now, "exp": now + API_KEY_LIFETIME_S}
        return cls(
            jwt_secret=secret,
            anon_key=sign({**base, "role": "anon"}, secret),
            service_role_key=sign({**base, "role": "service_role"}, secret),
        )

    @classmethod
    def load_or_create(cls, path: Path) -> StackKeys:
        """Keys kept in ``path`` (JSON), so a restarted stack accepts the same keys."""
        if path.exists():
            data = json.loads(path.read_text())
            return cls(data["jwt_secret"], data["anon_key"], data["service_role_key"])
        keys = cls.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(keys.__dict__))
        path.chmod(0o600)
        return keys

    def mint(self, claims: dict[str, Any], *, expires_in: float = 3600) -> str:
        """A token signed with this stack's secret; ``exp``/``iat`` added unless given."""
        now = int(time.time())
        full = {"iat": now, "exp": now + int(expires_in), **claims}
        return sign(full, self.jwt_secret)
