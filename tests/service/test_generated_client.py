"""A client generated from the live ``/openapi.json`` by ``openapi-python-client`` (in its
own environment, never the project's) calls search, re-ID, an indexing job and a
thumbnail against a live server, with the function and model names the operation ids
and schemas give it.

The generator is the executable named by ``POLYPINDEX_OPENAPI_CLIENT_BIN``; without it
the test is skipped (nothing is downloaded at test time). The generated package needs
only ``httpx``, ``attrs`` and ``python-dateutil``, which the project's environment has.
"""

from __future__ import annotations

import importlib
import io
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from helpers.viewer import ViewerWorld, build_world, live_server
from PIL import Image

GENERATOR = os.environ.get("POLYPINDEX_OPENAPI_CLIENT_BIN", "")
INSTALL = (
    "python -m venv var/openapi-client && var/openapi-client/bin/pip install "
    "openapi-python-client, then POLYPINDEX_OPENAPI_CLIENT_BIN=var/openapi-client/bin/"
    "openapi-python-client"
)
pytestmark = pytest.mark.skipif(
    not (GENERATOR and os.access(GENERATOR, os.X_OK)),
    reason=f"no openapi-python-client: {INSTALL}",
)
PACKAGE = "polypindex_generated_client"
# openapi-python-client reads JPEG bodies as bytes once told they are binary
CONFIG = "content_type_overrides:\n  image/jpeg: application/octet-stream\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> ViewerWorld:
    return build_world(tmp_path_factory.mktemp("generated") / "home")


@pytest.fixture(scope="module")
def served(world: ViewerWorld, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """(base URL, the generated package) for a live server of ``world``."""
    out = tmp_path_factory.mktemp("client")
    with live_server(world.settings, world.encoder) as url:
        with urllib.request.urlopen(f"{url}/openapi.json", timeout=10) as r:
            (out / "openapi.json").write_bytes(r.read())
        (out / "config.yaml").write_text(CONFIG)
        run = subprocess.run(
            [
                *(GENERATOR, "generate", "--path", str(out / "openapi.json"), "--meta", "none"),
                *("--config", str(out / "config.yaml"), "--output-path", str(out / PACKAGE)),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        sys.path.insert(0, str(out))
        try:
            yield url, importlib.import_module(PACKAGE)
        finally:
            sys.path.remove(str(out))
            for name in [m for m in sys.modules if m.split(".")[0] == PACKAGE]:
                del sys.modules[name]


def _module(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{name}")


def _client(url: str) -> Any:
    # the server runs open on loopback; a token is sent and ignored
    return _module("client").AuthenticatedClient(base_url=url, token="unused", timeout=30)


def test_search_and_reid_through_the_generated_client(served: Any, world: ViewerWorld) -> None:
    url, _ = served
    search = _module("api.search.search")
    reid = _module("api.reid.reid")
    models = _module("models")
    a, b = sorted(world.ids.values())[:2]
    with _client(url) as c:
        found = search.sync(
            client=c, body=models.SearchRequest.from_dict({"query": {"tracklet_id": a}, "k": 3})
        )
        same = reid.sync(
            client=c,
            body=models.ReidRequest.from_dict({"a": {"tracklet_id": a}, "b": {"tracklet_id": b}}),
        )
    assert isinstance(found, models.SearchResponse), found
    assert 1 <= len(found.results) <= 3 and a not in [h.tracklet_id for h in found.results]
    assert isinstance(same, models.ReidResponse), same
    assert -1.0 <= same.similarity <= 1.0


def test_a_job_through_the_generated_client(served: Any, world: ViewerWorld) -> None:
    url, _ = served
    submit = _module("api.indexing.submit_procedures")
    get_job = _module("api.indexing.get_job")
    models = _module("models")
    root = world.settings.data_roots[0] / "coco"
    body = models.CocoJob.from_dict({"kind": "coco", "root": str(root), "split": "test"})
    with _client(url) as c:
        job = submit.sync(client=c, body=body)
        assert isinstance(job, models.JobResponse), job
        deadline = time.monotonic() + 60
        while job.status not in ("succeeded", "failed") and time.monotonic() < deadline:
            time.sleep(0.1)
            job = get_job.sync(job.job_id, client=c)
    assert job.status == "succeeded", job
    assert job.created_at.tzinfo is not None  # a datetime with its offset, not a string
    assert isinstance(job.progress, models.JobProgress)
    assert job.progress.report is not None and job.progress.report.procedures_skipped >= 1
    assert job.params.root == "<data_root>/coco"


def test_a_thumbnail_through_the_generated_client(served: Any, world: ViewerWorld) -> None:
    url, _ = served
    thumbnail = _module("api.viewer.get_tracklet_thumbnail")
    tid = sorted(world.ids.values())[0]
    with _client(url) as c:
        answer = thumbnail.sync_detailed(tid, client=c)
    assert answer.status_code == 200
    jpeg = answer.parsed.payload.read()  # a File: the JPEG's bytes
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
