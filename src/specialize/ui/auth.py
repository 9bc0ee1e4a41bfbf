"""Signing in to the dashboard with an API key, and the CSRF check on everything that changes state.

The browser signs in once with an API key of the server (`specialize keys create`); the server answers with a
session cookie (HttpOnly, SameSite=Strict) holding the key's id, an expiry and a CSRF token, signed with a secret
drawn when the server starts. So the key itself is never in a cookie, a revoked key's session ends at its next
request, and a restart signs everyone out. A request that changes state (a form post, a JSON post) must carry the
session's CSRF token in the form field `csrf_token` or the header `X-CSRF-Token`; the login form, which has no
session yet, uses a double-submit cookie instead.

Pages that call the OpenAI API from the browser (playground, new run) send the key as a bearer token, as any
client does: the login page keeps it in the tab's sessionStorage. Bearer requests carry no ambient credential, so
they need no CSRF token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from fastapi import Request

if TYPE_CHECKING:
    from specialize.serve.api_keys import ApiKeys

SESSION_COOKIE = "specialize_session"
LOGIN_COOKIE = "specialize_login"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
LIFETIME_S = 12 * 3600


@dataclass(frozen=True)
class Session:
    """A signed-in browser: the key it signed in with (None when the server runs without keys) and whether that
    key sees every key's runs, as an admin key (or a server without keys) does."""

    key_id: str | None
    csrf: str
    expires: int
    admin: bool = False

    def sees(self, owner: str | None) -> bool:
        """Whether a run made by the fine-tuning job of key `owner` (None: nobody's) is shown to this session:
        the API's own rule for files, jobs and models."""
        return self.admin or owner is None or owner == self.key_id


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Issues and checks session cookies for one server process."""

    def __init__(self, keys: ApiKeys | None, lifetime_s: int = LIFETIME_S) -> None:
        self.keys = keys
        self.lifetime_s = lifetime_s
        self._secret = secrets.token_bytes(32)

    @property
    def auth(self) -> bool:
        """Whether signing in needs a key (False when the server runs with --no-auth)."""
        return self.keys is not None

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())

    def sign_in(self, secret: str | None) -> str | None:
        """A session cookie value for a valid key (any input when auth is off), else None."""
        key_id = None
        if self.keys is not None:
            key = self.keys.verify(secret) if secret else None
            if key is None:
                return None
            key_id = key.id
        body = {"k": key_id, "c": secrets.token_urlsafe(24), "e": int(time.time()) + self.lifetime_s}
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}"

    def read(self, request: Request) -> Session | None:
        """The request's session: signed by this server, not expired, and its key not revoked; the key's admin
        flag as it is now."""
        cookie = request.cookies.get(SESSION_COOKIE, "")
        payload, _, signature = cookie.partition(".")
        if not payload or not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            body = json.loads(_unb64(payload))
            session = Session(body["k"], str(body["c"]), int(body["e"]))
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires < time.time():
            return None
        if self.keys is None:
            return Session(session.key_id, session.csrf, session.expires, admin=True)
        key = next((k for k in self.keys.list() if k.id == session.key_id and k.active), None)
        if key is None:
            return None
        return Session(session.key_id, session.csrf, session.expires, admin=key.admin)


async def form_fields(request: Request) -> dict[str, str]:
    """The fields of an `application/x-www-form-urlencoded` body (the first value of each).

    Parsed with the standard library: FastAPI's form parsing needs the `python-multipart` package, for bodies
    that `urllib.parse` reads exactly.
    """
    body = (await request.body())[:65536].decode("utf-8", errors="replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


def csrf_ok(session: Session, submitted: str | None) -> bool:
    """Whether a state-changing request carries its session's CSRF token."""
    return bool(submitted) and hmac.compare_digest(str(submitted), session.csrf)


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a dashboard path only, never another site (`//host`, `https://...`)."""
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/runs"
