"""The published schema is exactly as strict as the server (issue 11).

Before: any ``image_b64`` string, 1–65536 embedding items while the model needs its
dim, any four bbox numbers, no maximum ``k``, a free-string ``kind`` with extra
properties on ``/procedures``, and the documented ``by_embedding`` example itself got
a 422.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers.indexing import FakeEncoder
from helpers.service_api import DIM, MAX_FRAMES, MAX_K, Setup, started

from polypindex.service.limits import max_image_b64_chars
from polypindex.service.schemas import MAX_ID, MAX_PROCEDURE_UIDS


class ServiceFakeEncoder(FakeEncoder):
    """Embeds query frames and can run indexing jobs (so job bodies get validated)."""

    def embed_tracklet(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        seq = np.stack([cv2.resize(img, (32, 32)) for img in images]).astype(np.float32) / 255.0
        return self.embed_sequences([seq.transpose(0, 3, 1, 2)])[0]


@pytest.fixture(scope="module")
def app_client(setup: Setup) -> Iterator[TestClient]:
    with started(setup.settings, ServiceFakeEncoder()) as c:
        yield c


@pytest.fixture(scope="module")
def doc(app_client: TestClient) -> dict[str, Any]:
    r = app_client.get("/openapi.json")
    assert r.status_code == 200
    body: dict[str, Any] = r.json()
    return body


def branch(prop: dict[str, Any], kind: str) -> dict[str, Any]:
    for b in prop.get("anyOf", [prop]):
        if b.get("type") == kind:
            return b  # type: ignore[no-any-return]
    raise AssertionError(prop)


def test_settings_and_model_limits_are_published(doc: dict[str, Any], setup: Setup) -> None:
    schemas = doc["components"]["schemas"]
    assert schemas["SearchRequest"]["properties"]["k"]["maximum"] == MAX_K
    tracklet = schemas["TrackletInput"]["properties"]
    assert branch(tracklet["frames"], "array")["maxItems"] == MAX_FRAMES
    embedding = branch(tracklet["embedding"], "array")
    assert embedding["minItems"] == embedding["maxItems"] == DIM  # the loaded model's dim
    tid = branch(tracklet["tracklet_id"], "integer")
    assert tid["minimum"] == 1 and tid["maximum"] == MAX_ID and isinstance(tid["maximum"], int)
    image = schemas["FrameInput"]["properties"]["image_b64"]
    assert image["maxLength"] == max_image_b64_chars(setup.settings.max_image_bytes)
    assert image["pattern"].startswith("^(data:image/")
    bbox = schemas["FrameInput"]["properties"]["bbox"]
    assert bbox["minItems"] == bbox["maxItems"] == 4
    assert [("exclusiveMinimum" in item) for item in bbox["prefixItems"]] == [
        False,
        False,
        True,
        True,
    ]
    search = schemas["SearchRequest"]["properties"]
    assert branch(search["procedure_uids"], "array")["maxItems"] == MAX_PROCEDURE_UIDS
    assert "maxItems" in search["exclude_tracklet_ids"]
    assert search["exclude_tracklet_ids"]["items"]["maximum"] == MAX_ID


def test_procedures_take_a_discriminated_union(doc: dict[str, Any]) -> None:
    body = doc["paths"]["/procedures"]["post"]["requestBody"]["content"]["application/json"]
    schema = body["schema"]
    assert schema["discriminator"]["propertyName"] == "kind"
    assert set(schema["discriminator"]["mapping"]) == {"coco", "video", "frames", "dicom"}
    schemas = doc["components"]["schemas"]
    for name, required in (
        ("CocoJob", {"kind", "root"}),
        ("VideoJob", {"kind", "video", "detections"}),
        ("FramesJob", {"kind", "folder", "detections"}),
        ("DicomJob", {"kind", "file", "detections"}),
    ):
        assert schemas[name]["additionalProperties"] is False
        assert set(schemas[name]["required"]) == required


def documented_examples(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            content = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            for name, example in content.get("examples", {}).items():
                out.append((f"{method.upper()} {path} {name}", path, example["value"]))
    for example in doc["components"]["schemas"]["TrackletInput"].get("examples", []):
        out.append((f"TrackletInput {sorted(example)}", "/search", {"query": example}))
    for example in doc["components"]["schemas"]["FrameInput"]["properties"]["bbox"].get(
        "examples", []
    ):
        frame = {"image_b64": "iVBORw0KGgo=", "bbox": example}
        out.append(("FrameInput.bbox", "/search", {"query": {"frames": [frame]}}))
    return out


def test_every_documented_example_is_valid(app_client: TestClient, doc: dict[str, Any]) -> None:
    examples = documented_examples(doc)
    assert len(examples) >= 12
    for name, path, value in examples:
        r = app_client.post(path, json=value)
        # 404 (no tracklet 42), 403 (the example's /data paths are outside this test's
        # roots) and 422 invalid_input (content) are fine; a schema error is not.
        assert r.status_code != 422 or r.json()["error"]["code"] != "validation_error", (
            name,
            r.text,
        )
        assert r.status_code < 500 or r.status_code == 503, (name, r.text)


def test_the_by_embedding_example_searches(app_client: TestClient, doc: dict[str, Any]) -> None:
    content = doc["paths"]["/search"]["post"]["requestBody"]["content"]["application/json"]
    value = dict(content["examples"]["by_embedding"]["value"])
    assert len(value["query"]["embedding"]) == DIM
    value.pop("procedure_uids")  # the example's procedures are not in this index
    r = app_client.post("/search", json=value)
    assert r.status_code == 200, r.text
