"""The key store: a secret is shown once and never kept; revoking takes effect at the next check."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from specialize.errors import NotFoundError
from specialize.runs import Registry
from specialize.serve.api_keys import PREFIX, ApiKeys


def every_value(registry: Registry) -> list[str]:
    """Every value of every column of every table in the registry, as text."""
    values = []
    meta = sa.MetaData()
    meta.reflect(registry.engine)
    with registry.engine.connect() as conn:
        for table in meta.sorted_tables:
            for row in conn.execute(table.select()):
                values += [str(v) for v in row]
    return values


def test_the_registry_holds_no_plaintext_key_anywhere(tmp_path):
    path = tmp_path / "registry.db"
    registry = Registry(f"sqlite:///{path}")
    keys = ApiKeys(registry)
    secrets = [keys.create(f"app {i}")[1] for i in range(3)]
    keys.revoke(keys.list()[0].id)
    values = every_value(registry)
    assert len(values) >= 3 * 6  # the rows are there to be scanned
    for secret in secrets:
        assert secret.startswith(PREFIX) and len(secret) > 40
        body = secret.removeprefix(PREFIX)
        # no column holds the key or a long piece of it (the shown prefix is 4 characters of it)
        assert not any(body[:12] in value or body[-12:] in value for value in values)
    raw = path.read_bytes()  # nor does any byte of the file, free pages and journal included
    assert not any(s.removeprefix(PREFIX)[:12].encode() in raw for s in secrets)


def test_verify_list_and_revoke(tmp_path):
    keys = ApiKeys(Registry(f"sqlite:///{tmp_path / 'registry.db'}"))
    key, secret = keys.create("app")
    assert keys.verify(secret) == key and keys.verify(secret + "x") is None and keys.verify("") is None
    [listed] = keys.list()
    assert listed.id == key.id and listed.active and secret.startswith(listed.shown_prefix)
    assert keys.any_active()
    assert keys.revoke(key.id).revoked_at is not None
    assert keys.verify(secret) is None and not keys.any_active()
    with pytest.raises(NotFoundError, match="already revoked"):
        keys.revoke(key.id)
    with pytest.raises(NotFoundError, match="keys list"):
        keys.revoke("key_nope")
