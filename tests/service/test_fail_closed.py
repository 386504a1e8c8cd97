"""Fail closed (issue 24): a database that holds the API keys and refuses connections at
start-up leaves every scoped endpoint answering 503 ``auth_unavailable`` (never open),
until the database answers again; unauthenticated ``/healthz`` never shows its address."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.auth import add_key, bearer
from helpers.databases import pg_schema_url
from helpers.service_api import DIM, MeanColourEncoder, assert_error, started
from sqlalchemy.engine import make_url

from polypindex.service import auth
from polypindex.service.settings import Settings

pytestmark = pytest.mark.postgres
REID = {"a": {"embedding": [1.0] * DIM}, "b": {"embedding": [1.0] * DIM}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Forwarder:
    """A TCP relay from ``127.0.0.1:port`` to the database, started late: the database
    "comes back" on the port the service was given."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server(("127.0.0.1", port))
        self.server.settimeout(0.2)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.stopped.set()
        self.server.close()
        self.thread.join(timeout=2)


@pytest.fixture
def live_url() -> Iterator[str]:
    yield from pg_schema_url()


def test_database_away_at_start_is_closed_until_it_answers(
    live_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = add_key(live_url, "ops", "admin")  # keys exist: the service must require them
    live = make_url(live_url)
    port = free_port()  # nothing listens there yet: connections are refused
    away = live.set(port=port).render_as_string(hide_password=False)
    monkeypatch.setattr(auth, "RECHECK_SECONDS", 0.0)
    settings = Settings(home=tmp_path, database_url=away)
    with started(settings, MeanColourEncoder()) as c:
        health = c.get("/healthz")
        assert health.status_code == 200 and health.json()["auth"] == "keys"
        for secret in (f"{live.host}", str(port), f"{live.username}@", "port "):
            assert secret not in health.text, health.text
        assert_error(c.post("/reid", json=REID), 503, "auth_unavailable", "database")
        assert_error(c.get("/procedures"), 503, "auth_unavailable")
        r = c.post("/reid", json=REID, headers=bearer(token))
        assert_error(r, 503, "auth_unavailable")  # a key cannot be checked either
        relay = Forwarder(port, (live.host or "127.0.0.1", live.port or 5432))
        try:
            assert_error(c.post("/reid", json=REID), 401, "unauthorized")  # keys, not open
            r = c.get("/procedures", headers=bearer(token))  # the key is checked and passes
            assert r.status_code not in (401, 403), r.text
            assert r.status_code == 200 or r.json()["error"]["code"] != "auth_unavailable"
            assert c.get("/healthz").json()["auth"] == "keys"
        finally:
            relay.close()


def test_undetermined_mode_is_not_rechecked_more_often_than_allowed(
    live_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_key(live_url, "ops", "admin")
    away = make_url(live_url).set(port=free_port()).render_as_string(hide_password=False)
    monkeypatch.setattr(auth, "RECHECK_SECONDS", 3600.0)
    opened: list[str] = []
    real = auth.Store

    def counting_store(url: str, **kwargs: object) -> object:
        opened.append(url)
        return real(url, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(auth, "Store", counting_store)
    with started(Settings(home=tmp_path, database_url=away), MeanColourEncoder()) as c:
        for _ in range(3):
            assert_error(c.post("/reid", json=REID), 503, "auth_unavailable")
    assert len(opened) <= 1
