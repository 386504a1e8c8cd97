"""Paths and ids over HTTP (issue 24): a path that cannot be resolved is a 4xx naming the
field, never a 500; a UID the store cannot hold (NUL, over its 255-character column) is
a 422 before any SQL, the same on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers.databases import BACKENDS, backend_url
from helpers.indexing import write_csv, write_frames
from helpers.service_api import assert_error
from helpers.service_jobs import ServiceFakeEncoder, coco_job, job_client, job_settings

from polypindex.service.app import create_app
from polypindex.service.settings import Settings

settings = pytest.fixture(job_settings, name="settings")
client = pytest.fixture(job_client, name="client")
LONG = "a" * 256  # one byte over a path component's limit


def frames_job(folder: str, detections: str) -> dict[str, Any]:
    return {"kind": "frames", "folder": folder, "detections": detections, "min_tracklet_length": 3}


def _no_job(client: TestClient) -> None:
    assert client.get("/jobs").json()["jobs"] == []


def test_an_unknown_home_is_422_naming_root(client: TestClient) -> None:
    r = client.post("/procedures", json=coco_job(Path("~nosuchuser-xyz") / "data"))
    assert_error(r, 422, "invalid_input", "root", "'~'")
    _no_job(client)


@pytest.mark.parametrize("field", ["root", "folder", "video"])
def test_an_over_long_path_component_is_422_naming_the_field(
    client: TestClient, settings: Settings, field: str
) -> None:
    roots = settings.data_roots[0]
    roots.mkdir(parents=True, exist_ok=True)
    long_path = str(roots / LONG / "x")
    csv = str(write_csv(roots / "det.csv", 6))
    body = {
        "root": coco_job(Path(long_path)),
        "folder": frames_job(long_path, csv),
        "video": {"kind": "video", "video": long_path, "detections": csv},
    }[field]
    r = client.post("/procedures", json=body)
    message = assert_error(r, 422, "invalid_input", field, "longer than 255 bytes")
    assert LONG not in message
    _no_job(client)


def test_a_symlink_loop_in_a_data_root_is_422(client: TestClient, settings: Settings) -> None:
    roots = settings.data_roots[0]
    roots.mkdir(parents=True, exist_ok=True)
    (roots / "loop").symlink_to(roots / "loop")
    write_frames(roots / "frames", 6)
    csv = str(write_csv(roots / "det.csv", 6))
    r = client.post("/procedures", json=frames_job(str(roots / "loop" / "frames"), csv))
    assert_error(r, 422, "invalid_input", "folder", "symlink loop")
    _no_job(client)


@pytest.fixture(params=BACKENDS)
def backend_client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    for url in backend_url(request.param, tmp_path):
        app = create_app(Settings(home=tmp_path / "home", database_url=url))
        app.state.encoder = ServiceFakeEncoder()
        with TestClient(app) as c:
            yield c


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/procedures/a%00b/polyps"),
        ("GET", f"/procedures/{'u' * 256}/polyps"),
        ("GET", "/procedures/a%00b"),
        ("GET", f"/procedures/{'u' * 256}"),
        ("DELETE", "/procedures/a%00b"),
        ("DELETE", f"/procedures/{'u' * 256}"),
    ],
)
def test_a_uid_the_store_cannot_hold_is_422_on_every_backend(
    backend_client: TestClient, method: str, path: str
) -> None:
    r = backend_client.request(method, path)
    assert_error(r, 422, "validation_error", "uid")


def test_a_uid_of_255_characters_is_looked_up(backend_client: TestClient) -> None:
    uid = "u" * 255
    assert_error(backend_client.get(f"/procedures/{uid}/polyps"), 404, "procedure_not_found")
    assert_error(backend_client.delete(f"/procedures/{uid}"), 404, "procedure_not_found")
