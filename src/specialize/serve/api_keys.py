"""API keys for `specialize serve`: created once, shown once, stored only as a hash, revocable.

Keys are 256-bit random tokens, so a single SHA-256 is enough to make a stolen registry useless: a slow password
hash (argon2, bcrypt) only matters for secrets a person chose and a guesser could enumerate.

A key sees the files, fine-tuning jobs and fine-tuned models it made, and everything nobody owns (runs trained
with `specialize run`); an admin key (`specialize keys create --admin`) sees everything.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from specialize.errors import NotFoundError
from specialize.runs import Registry, now

PREFIX = "sk-spec-"
# What an admin key's requests look up rows with, in place of a key id: every key's rows (key ids are `key_<hex>`).
EVERY_KEY = "*"


@dataclass(frozen=True)
class ApiKey:
    """A key as listed: never its secret."""

    id: str
    name: str
    shown_prefix: str
    created_at: datetime
    revoked_at: datetime | None
    admin: bool = False

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeys:
    """The `api_keys` table of a registry."""

    def __init__(self, registry: Registry) -> None:
        import sqlalchemy as sa

        self.engine = registry.engine
        meta = sa.MetaData()
        self.table = sa.Table(
            "api_keys",
            meta,
            sa.Column("id", sa.String(40), primary_key=True),
            sa.Column("name", sa.String(200), nullable=False),
            sa.Column("shown_prefix", sa.String(40), nullable=False),
            sa.Column("sha256", sa.String(64), nullable=False, unique=True),
            sa.Column("created_at", sa.DateTime, nullable=False),
            sa.Column("revoked_at", sa.DateTime),
            sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false()),
        )
        meta.create_all(self.engine)
        if "admin" not in {c["name"] for c in sa.inspect(self.engine).get_columns("api_keys")}:
            # a registry from before admin keys: its keys stay what they were, keys of their own owner
            with self.engine.begin() as conn:
                conn.execute(sa.text("ALTER TABLE api_keys ADD COLUMN admin BOOLEAN NOT NULL DEFAULT FALSE"))

    def create(self, name: str, admin: bool = False) -> tuple[ApiKey, str]:
        """A new key and its secret; the secret is not stored and cannot be shown again."""
        secret = PREFIX + secrets.token_urlsafe(32)
        key = ApiKey("key_" + secrets.token_hex(6), name, secret[: len(PREFIX) + 4], now(), None, admin)
        with self.engine.begin() as conn:
            conn.execute(
                self.table.insert().values(
                    id=key.id,
                    name=key.name,
                    shown_prefix=key.shown_prefix,
                    sha256=_hash(secret),
                    created_at=key.created_at,
                    admin=admin,
                )
            )
        return key, secret

    def list(self) -> list[ApiKey]:
        cols = [c for c in self.table.c if c.name != "sha256"]
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(*cols).order_by(self.table.c.created_at)).mappings().all()
        return [ApiKey(**r) for r in rows]

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key by id; requests with it get 401 from the next one on."""
        with self.engine.begin() as conn:
            done = conn.execute(
                self.table.update()
                .where((self.table.c.id == key_id) & self.table.c.revoked_at.is_(None))
                .values(revoked_at=now())
            )
        match = [k for k in self.list() if k.id == key_id]
        if not match:
            raise NotFoundError(f"no API key {key_id!r}; `specialize keys list` shows the key ids")
        if done.rowcount == 0:
            raise NotFoundError(
                f"API key {key_id!r} was already revoked on {match[0].revoked_at:%Y-%m-%d %H:%M}"
            )
        return match[0]

    def verify(self, secret: str) -> ApiKey | None:
        """The active key with this secret, or None."""
        cols = [c for c in self.table.c if c.name != "sha256"]
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            row: Any = (
                conn.execute(
                    sa.select(*cols).where(
                        (self.table.c.sha256 == _hash(secret)) & self.table.c.revoked_at.is_(None)
                    )
                )
                .mappings()
                .first()
            )
        return ApiKey(**row) if row else None

    def any_active(self) -> bool:
        return any(k.active for k in self.list())
