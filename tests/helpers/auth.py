"""API keys for tests: create one in a service's store and send it.

    token = add_key(settings, "reader", "read")       # in settings.database_url
    r = client.get("/jobs", headers=bearer(token))

An app only checks keys when it runs in ``keys`` mode: settings with
``auth="keys"``, or ``auth="auto"`` (the default) with a key in the store when the
app starts. Without keys, on the default host 127.0.0.1, it runs open (every existing
test). :func:`keys_settings` copies settings into ``keys`` mode.
"""

from __future__ import annotations

from typing import Any

from polypindex.indexer.keys import create_key
from polypindex.indexer.store import Store
from polypindex.service.settings import Settings


def add_key(settings: Settings | str, name: str, scope: str = "admin") -> str:
    """Create the key ``name`` of ``scope`` in the store of ``settings`` (or at a database
    URL); returns its token."""
    url = settings if isinstance(settings, str) else settings.database_url
    store = Store(url)
    try:
        _, token = create_key(store, name, scope, actor="test")
    finally:
        store.close()
    return token


def bearer(token: str) -> dict[str, str]:
    """The request headers that carry ``token``."""
    return {"Authorization": f"Bearer {token}"}


def keys_settings(settings: Settings, **changes: Any) -> Settings:
    """``settings`` with keys required (``auth="keys"``) and ``changes`` applied."""
    return settings.model_copy(update={"auth": "keys", **changes})
