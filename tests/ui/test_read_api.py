"""The viewer's read endpoints on a tiny index made by the real pipeline: pages and filters
of procedures, a procedure's timeline, one tracklet, thumbnails and frame strips (JPEG,
cache headers, stored paths kept inside the index folder), the 2-D map, the static page."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers.service_api import assert_error, started
from helpers.viewer import ViewerWorld
from sqlalchemy import update

from polypindex.indexer.reads import inside, pca_2d, sample_ids
from polypindex.indexer.store import Store
from polypindex.indexer.strips import pick_frames
from polypindex.indexer.tables import TrackletModel

ALL = ["ds:001", "ds:002", "frames-proc", "video-proc"]


def uids(body: dict[str, Any]) -> list[str]:
    return [p["uid"] for p in body["procedures"]]


def jpeg(content: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(content, dtype=np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.size > 0
    return image


def test_procedures_are_paged_in_uid_order(client: TestClient) -> None:
    body = client.get("/procedures").json()
    assert uids(body) == ALL and body["total"] == 4 and body["next_offset"] is None
    first = client.get("/procedures", params={"limit": 3}).json()
    second = client.get("/procedures", params={"limit": 3, "offset": first["next_offset"]}).json()
    assert uids(first) + uids(second) == ALL
    assert first["next_offset"] == 3 and second["next_offset"] is None
    assert body["procedures"][0]["n_tracklets"] == 2
    assert (
        body["procedures"][0]["indexed_at"].endswith("Z")
        or "+00:00" in (body["procedures"][0]["indexed_at"])
    )


def test_procedures_filter_by_dataset_date_label_and_version(
    client: TestClient, world: ViewerWorld
) -> None:
    assert uids(client.get("/procedures", params={"dataset": "ds"}).json()) == ["ds:001", "ds:002"]
    assert uids(client.get("/procedures", params={"dataset": "none"}).json()) == []
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    assert uids(client.get("/procedures", params={"indexed_after": future}).json()) == []
    assert uids(client.get("/procedures", params={"indexed_after": past}).json()) == ALL
    assert uids(client.get("/procedures", params={"indexed_before": past}).json()) == []
    assert uids(client.get("/procedures", params={"encoder_version": "other"}).json()) == []
    # a label filter keeps the procedures with at least one tracklet predicted so
    for label in ("diminutive", "non_diminutive"):
        expected = sorted(
            {
                t["procedure_uid"]
                for tid in world.ids.values()
                if (t := client.get(f"/tracklets/{tid}").json())["predictions"]["size"]["label"]
                == label
            }
        )
        got = client.get("/procedures", params={"predicted_size": label}).json()
        assert uids(got) == expected and got["total"] == len(expected)


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 501},
        {"offset": -1},
        {"dataset": "a\x01b"},
        {"indexed_after": "yesterday"},
        {"predicted_size": "huge"},
    ],
)
def test_bad_procedure_queries_are_422(client: TestClient, params: dict[str, Any]) -> None:
    assert_error(client.get("/procedures", params=params), 422, "validation_error")


def test_an_out_of_range_date_is_422(client: TestClient) -> None:
    r = client.get("/procedures", params={"indexed_after": "9999-12-31T23:59:59-14:00"})
    assert_error(r, 422, "invalid_input", "out of range")


def test_a_procedure_timeline_lists_its_tracklets_frame_ranges(
    client: TestClient, world: ViewerWorld
) -> None:
    body = client.get("/procedures/ds:001").json()
    assert body["procedure"]["uid"] == "ds:001" and (body["first_frame"], body["last_frame"]) == (
        0,
        5,
    )
    assert [t["tracklet_id"] for t in body["tracklets"]] == [
        world.id_of("001/p1/0"),
        world.id_of("001/p2/0"),
    ]
    t = body["tracklets"][0]
    assert (t["start_frame"], t["end_frame"], t["n_frames"]) == (0, 5, 6)
    assert t["thumbnail_url"] == f"/tracklets/{t['tracklet_id']}/thumbnail"
    assert set(t["predictions"]) == {"size", "histology"}
    assert_error(client.get("/procedures/nope"), 404, "procedure_not_found", "nope")


def test_timeline_and_map_carry_the_polyp_entities(client: TestClient, world: ViewerWorld) -> None:
    """The entities of ``GET /procedures/{uid}/polyps`` (grouped at indexing time), per
    tracklet, on the timeline and the map."""
    entity_of: dict[int, int | None] = {}
    for uid in ALL:
        polyps = client.get(f"/procedures/{uid}/polyps").json()
        truth = {tid: e["entity_id"] for e in polyps["entities"] for tid in e["tracklet_ids"]}
        timeline = client.get(f"/procedures/{uid}").json()["tracklets"]
        assert {t["tracklet_id"]: t["entity_id"] for t in timeline} == {
            t["tracklet_id"]: truth.get(t["tracklet_id"]) for t in timeline
        }
        entity_of.update((t["tracklet_id"], t["entity_id"]) for t in timeline)
    assert any(e is not None for e in entity_of.values())
    points = client.get("/index/map").json()["points"]
    assert {p["tracklet_id"]: p["entity_id"] for p in points} == entity_of


def test_a_tracklet_has_metadata_boxes_and_predictions(
    client: TestClient, world: ViewerWorld
) -> None:
    tid = world.id_of("001/p1/0")
    body = client.get(f"/tracklets/{tid}").json()
    assert body["procedure_uid"] == "ds:001" and body["dataset_id"] == "ds"
    assert body["key"] == "001/p1/0" and body["identity_label"] == "p1"
    assert body["size_mm"] == 4.0 and body["histology"] == "adenoma"
    assert body["boxes"]["first"] == [4.0, 8.0, 12.0, 12.0]
    assert body["boxes"]["last"] == [9.0, 8.0, 12.0, 12.0]
    assert body["boxes"]["frame_ids"] == [0, 1, 2, 3, 4, 5]
    assert body["predictions"]["size"]["label"] in ("diminutive", "non_diminutive")
    assert body["strip_url"] == f"/tracklets/{tid}/strip"


@pytest.mark.parametrize("suffix", ["", "/thumbnail", "/strip"])
def test_unknown_and_malformed_tracklet_ids(client: TestClient, suffix: str) -> None:
    assert_error(client.get(f"/tracklets/999999{suffix}"), 404, "tracklet_not_found", "999999")
    for bad in ("0", "-3", str(2**63), "abc", "1.5"):
        assert_error(client.get(f"/tracklets/{bad}{suffix}"), 422, "validation_error")


def test_thumbnails_are_jpegs_with_cache_headers(client: TestClient, world: ViewerWorld) -> None:
    tid = world.id_of("002/p3/0")
    r = client.get(f"/tracklets/{tid}/thumbnail")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert jpeg(r.content).shape[:2] == (32, 32)  # the encoder's crop size
    assert r.headers["cache-control"].startswith("private") and r.headers["etag"]
    again = client.get(f"/tracklets/{tid}/thumbnail", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    other = client.get(f"/tracklets/{tid}/thumbnail", headers={"If-None-Match": '"x"'})
    assert other.status_code == 200 and other.content == r.content


@pytest.mark.parametrize("stored", ["../../polypindex.db", "/etc/passwd", "thumbnails", None])
def test_a_stored_thumbnail_path_never_leaves_the_index_folder(
    world: ViewerWorld, tmp_path: Any, stored: str | None
) -> None:
    tid = world.id_of("001/p2/0")
    store = Store(world.settings.database_url)
    before = store.get_tracklet(tid).thumbnail_path
    try:
        with store.sessions.begin() as session:
            session.execute(
                update(TrackletModel).where(TrackletModel.id == tid).values(thumbnail_path=stored)
            )
        with started(world.settings, world.encoder) as c:
            r = c.get(f"/tracklets/{tid}/thumbnail")
        message = assert_error(r, 404, "thumbnail_not_found", str(tid))
        assert "/" not in message.replace(f"tracklet {tid}", "")
    finally:
        with store.sessions.begin() as session:
            session.execute(
                update(TrackletModel).where(TrackletModel.id == tid).values(thumbnail_path=before)
            )
        store.close()


def test_inside_keeps_paths_under_their_root(tmp_path: Any) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("s")
    (tmp_path / "a" / "out").symlink_to(tmp_path)
    assert inside(tmp_path / "a", "x.jpg") == (tmp_path / "a" / "x.jpg").resolve()
    for bad in ("../secret.txt", "/etc/passwd", "out/secret.txt", "", ".", "x\x00.jpg"):
        assert inside(tmp_path / "a", bad) is None, bad


def test_a_coco_strip_shows_the_annotated_boxes(client: TestClient, world: ViewerWorld) -> None:
    tid = world.id_of("001/p1/0")
    r = client.get(f"/tracklets/{tid}/strip", params={"frames": 3, "height": 96})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.headers["x-boxes"] == "annotated" and r.headers["etag"]
    image = jpeg(r.content)
    assert image.shape[0] == 96
    assert image.shape[1] == 3 * 128 + 2 * 4  # three 64x48 frames scaled x2, 4 px gaps
    # frame 0's box [4, 8, 12, 12] (x2) drawn in green on the first tile: its top edge
    b, g, red = image[16:18, 12:28].reshape(-1, 3).mean(axis=0)
    assert g > 150 and g > b + 40 and g > red + 40
    cached = client.get(
        f"/tracklets/{tid}/strip",
        params={"frames": 3, "height": 96},
        headers={"If-None-Match": r.headers["etag"]},
    )
    assert cached.status_code == 304


def test_a_frames_folder_strip_interpolates_the_boxes(
    client: TestClient, world: ViewerWorld
) -> None:
    r = client.get(f"/tracklets/{world.id_of('frames-proc/track/0')}/strip")
    assert r.status_code == 200 and r.headers["x-boxes"] == "interpolated"
    assert jpeg(r.content).shape[0] == 120


def test_no_strip_for_a_video_or_outside_the_data_roots(world: ViewerWorld) -> None:
    with started(world.settings, world.encoder) as c:
        r = c.get(f"/tracklets/{world.id_of('video-proc/track/0')}/strip")
        assert "video" in assert_error(r, 409, "frames_unavailable")
    closed = world.settings.model_copy(update={"data_roots": []})
    with started(closed, world.encoder) as c:
        for key in ("001/p1/0", "frames-proc/track/0"):
            message = assert_error(
                c.get(f"/tracklets/{world.id_of(key)}/strip"), 409, "frames_unavailable"
            )
            assert str(world.settings.home) not in message  # no server path in the answer


def test_strip_sizes_are_capped(client: TestClient, world: ViewerWorld) -> None:
    tid = world.id_of("001/p1/0")
    for params in ({"frames": 0}, {"frames": 13}, {"height": 31}, {"height": 361}):
        assert_error(client.get(f"/tracklets/{tid}/strip", params=params), 422, "validation_error")


def test_the_map_places_every_sampled_vector(client: TestClient, world: ViewerWorld) -> None:
    body = client.get("/index/map").json()
    assert body["method"] == "pca" and "pca" in body["methods"]
    assert body["total"] == len(world.ids) == body["sampled"]
    points = {p["tracklet_id"]: p for p in body["points"]}
    assert set(points) == set(world.ids.values())
    for tid, p in points.items():
        assert -1.0 <= p["x"] <= 1.0 and -1.0 <= p["y"] <= 1.0
        assert p["procedure_uid"] == world.procedure_of[tid]
        assert set(p["predictions"]) == {"size", "histology"}
    few = client.get("/index/map", params={"limit": 3}).json()
    assert few["sampled"] == 3 and few["total"] == len(world.ids)
    assert_error(client.get("/index/map", params={"limit": 0}), 422, "validation_error")
    assert_error(client.get("/index/map", params={"limit": 5001}), 422, "validation_error")
    assert_error(client.get("/index/map", params={"method": "tsne"}), 422, "validation_error")


def test_umap_is_refused_without_its_extra(client: TestClient) -> None:
    try:
        import umap  # noqa: F401
    except ImportError:
        message = assert_error(
            client.get("/index/map", params={"method": "umap"}), 422, "invalid_input"
        )
        assert "umap-learn" in message
    else:
        assert client.get("/index/map", params={"method": "umap"}).json()["method"] == "umap"


def test_umap_is_used_when_installed(
    client: TestClient, world: ViewerWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``umap-learn`` present (a stand-in module here), ``method=umap`` runs it on the
    sampled vectors with the cosine metric and reports it."""
    import sys
    import types

    from polypindex.indexer import reads

    calls: list[dict[str, Any]] = []

    class FakeUMAP:
        def __init__(self, **kwargs: Any) -> None:
            calls.append(kwargs)

        def fit_transform(self, x: np.ndarray) -> np.ndarray:
            return np.stack([x[:, 0], np.arange(len(x), dtype=np.float64)], axis=1)

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    monkeypatch.setattr(reads, "umap_available", lambda: True)
    body = client.get("/index/map", params={"method": "umap"}).json()
    assert body["method"] == "umap" and body["methods"] == ["pca", "umap"]
    assert calls and calls[0]["metric"] == "cosine" and calls[0]["n_components"] == 2
    ys = [p["y"] for p in sorted(body["points"], key=lambda p: p["tracklet_id"])]
    assert ys == sorted(ys) and ys[0] == -1.0 and ys[-1] == 1.0  # the stand-in's axis, scaled


def test_pca_finds_the_main_axis_and_sampling_is_even() -> None:
    rng = np.random.default_rng(0)
    t = rng.normal(size=200)
    x = np.stack([3 * t, 3 * t, 0.1 * rng.normal(size=200), 0.1 * rng.normal(size=200)], axis=1)
    xy = pca_2d(x)
    assert abs(np.corrcoef(xy[:, 0], t)[0, 1]) > 0.99
    assert xy[:, 0].std() > 10 * xy[:, 1].std()
    assert np.array_equal(pca_2d(x), xy)  # deterministic sign
    ids = np.arange(1, 101, dtype=np.int64)
    assert sample_ids(ids, 5).tolist() == [1, 26, 51, 75, 100]
    assert sample_ids(ids, 500).tolist() == ids.tolist()
    assert pick_frames(list(range(10)), 3) == [0, 4, 9]
    assert pick_frames([7, 8], 5) == [7, 8]


def test_the_page_and_its_files_are_served(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "/ui/app.js" in r.text and "http" not in r.text.replace("http-equiv", "")  # no CDN
    assert client.get("/ui", follow_redirects=False).status_code == 307
    for name, kind in (("app.js", "javascript"), ("map.js", "javascript"), ("style.css", "css")):
        asset = client.get(f"/ui/{name}")
        assert asset.status_code == 200 and kind in asset.headers["content-type"]
        assert (
            client.get(f"/ui/{name}", headers={"If-None-Match": asset.headers["etag"]}).status_code
            == 304
        )
    assert_error(client.get("/ui/secret.py"), 404, "not_found")
    assert client.get("/ui/..%2F__init__.py").status_code == 404
