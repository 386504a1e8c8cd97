"""Inputs confined to the data roots (issue 11), and job bodies as typed as the server.

Before: a COCO annotation file inside a data root whose ``file_name``s were absolute
paths elsewhere was fully indexed (thumbnails written); a symlinked frame file
pointing outside was read; a malformed job got a 202 and failed later; 403 and
job error messages carried absolute server paths.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers.indexing import write_coco, write_csv, write_frames
from helpers.service_api import assert_error
from helpers.service_jobs import coco_job, job_client, job_settings, wait_for

from polypindex.indexer.store import Store
from polypindex.service.settings import Settings

settings = pytest.fixture(job_settings, name="settings")
client = pytest.fixture(job_client, name="client")


def nothing_written(settings: Settings) -> None:
    store = Store(settings.database_url)
    try:
        assert store.list_procedures() == [] and store.count_tracklets() == 0
    finally:
        store.close()
    thumbs = list(settings.index_dir.rglob("*.jpg")) if settings.index_dir.exists() else []
    assert thumbs == [], thumbs


def no_server_paths(text: str, *paths: Path) -> None:
    for p in paths:
        assert str(p) not in text and str(p.resolve()) not in text, text


def test_coco_file_names_outside_the_roots_fail_the_job_before_writing(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    elsewhere = write_coco(tmp_path / "elsewhere")  # real images, outside every root
    inside = settings.data_roots[0] / "inside"
    shutil.copytree(elsewhere / "annotations", inside / "annotations")
    ann = next((inside / "annotations").glob("*.json"))
    data = json.loads(ann.read_text())
    for image in data["images"]:  # absolute file names pointing outside
        image["file_name"] = str((elsewhere / "images" / image["file_name"]).resolve())
    ann.write_text(json.dumps(data))
    (inside / "images").mkdir()

    r = client.post("/procedures", json=coco_job(inside))
    assert r.status_code == 202, r.text
    job = wait_for(client, r.json()["job_id"])
    assert job["status"] == "failed", job
    assert "PathNotAllowedError" in job["error"] and "outside" in job["error"], job["error"]
    no_server_paths(json.dumps(job), elsewhere, settings.data_roots[0])
    nothing_written(settings)


def test_a_symlinked_frame_file_outside_the_roots_fails_before_writing(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    outside = write_frames(tmp_path / "outside_frames", 12)
    folder = settings.data_roots[0] / "frames"
    folder.mkdir(parents=True)
    for f in sorted(outside.iterdir()):  # every frame a symlink out of the roots
        (folder / f.name).symlink_to(f)
    csv = write_csv(settings.data_roots[0] / "det.csv", 12)
    r = client.post(
        "/procedures",
        json={
            "kind": "frames",
            "folder": str(folder),
            "detections": str(csv),
            "min_tracklet_length": 3,
        },
    )
    assert r.status_code == 202, r.text
    job = wait_for(client, r.json()["job_id"])
    assert job["status"] == "failed" and "outside" in job["error"], job
    no_server_paths(json.dumps(job), outside, settings.data_roots[0])
    nothing_written(settings)


def test_a_symlinked_annotation_file_is_refused_at_submission(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    elsewhere = write_coco(tmp_path / "elsewhere")
    inside = settings.data_roots[0] / "linked"
    (inside / "annotations").mkdir(parents=True)
    for f in (elsewhere / "annotations").iterdir():
        (inside / "annotations" / f.name).symlink_to(f)
    r = client.post("/procedures", json=coco_job(inside))
    message = assert_error(r, 403, "path_not_allowed", "annotation file")
    no_server_paths(message, elsewhere, settings.data_roots[0])
    assert client.get("/jobs").json()["jobs"] == []


def test_kind_specific_fields_are_checked_at_submission(
    client: TestClient, settings: Settings
) -> None:
    data = write_coco(settings.data_roots[0] / "d")
    cases = [
        ({"kind": "coco", "root": str(data), "folder": "x"}, "folder"),  # another kind's field
        ({"kind": "video", "video": str(data)}, "detections"),  # missing
        (
            {"kind": "frames", "folder": str(data), "detections": "x", "min_score": "hi"},
            "min_score",
        ),
        ({"kind": "coco", "root": str(data), "min_tracklet_length": 0}, "min_tracklet_length"),
        ({"kind": "coco", "root": str(data), "split": "../../etc"}, "split"),
        ({"kind": "video", "video": "v", "detections": "d", "first_frame": 2**63}, "first_frame"),
        ({"kind": "coco", "root": "/data/x\x00y"}, "body.coco.root"),  # a NUL: was a 500
    ]
    for body, field in cases:
        assert_error(client.post("/procedures", json=body), 422, "validation_error", field)
    # a folder where a file is needed: a 422 at submission, not a failed job later
    assert_error(
        client.post(
            "/procedures",
            json={"kind": "video", "video": str(data), "detections": str(data)},
        ),
        422,
        "invalid_input",
        "not a file",
    )
    assert client.get("/jobs").json()["jobs"] == []


def test_get_job_refuses_control_characters(client: TestClient) -> None:
    assert_error(client.get("/jobs/a%00b"), 422, "validation_error", "path.job_id")
    assert_error(client.get("/jobs/" + "a" * 65), 422, "validation_error", "path.job_id")
    assert_error(client.get("/jobs/0123abcd"), 404, "job_not_found")


def test_missing_input_message_is_root_relative(client: TestClient, settings: Settings) -> None:
    missing = settings.data_roots[0] / "nope"
    message = assert_error(
        client.post("/procedures", json=coco_job(missing)), 422, "invalid_input", "<data_root>/nope"
    )
    no_server_paths(message, settings.data_roots[0])
