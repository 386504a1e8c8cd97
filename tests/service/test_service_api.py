"""The HTTP API over a real SQLite store and FAISS index, with a fake encoder (no ONNX, no torch).

The fake encoder embeds a tracklet as a fixed projection of its mean pixel
colour, so a query by frames has a known answer.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from polypindex.indexer.store import Store, TrackletRow
from polypindex.indexer.vector_index import VectorIndex
from polypindex.service.app import create_app
from polypindex.service.deps import get_encoder
from polypindex.service.settings import Settings

DIM = 16
VERSION = "fake-v1"
OTHER_VERSION = "old-v0"
PROCEDURES = ("proc/a", "proc/b", "proc/c")
PER_PROCEDURE = 6
RED = (200, 30, 30)
MAX_FRAMES = 8
MAX_K = 50


class FakeEncoder:
    """Deterministic stand-in for ``OnnxEncoder``: a projection of the mean RGB colour."""

    version = VERSION
    dim = DIM

    def __init__(self, reid_threshold: float = 0.6) -> None:
        self.reid_threshold = reid_threshold
        self._projection = np.random.default_rng(123).standard_normal((DIM, 3))

    def vector_for_colour(self, rgb: Sequence[float]) -> np.ndarray:
        v = self._projection @ (np.asarray(rgb, dtype=np.float64) / 255.0 - 0.5)
        return (v / np.linalg.norm(v)).astype(np.float32)

    def embed_tracklet(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        assert len(images) == len(boxes) and np.asarray(boxes).shape[1] == 4
        mean = np.mean([img.reshape(-1, 3).mean(axis=0) for img in images], axis=0)
        return self.vector_for_colour(mean)


class ExplodingEncoder(FakeEncoder):
    def embed_tracklet(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        raise RuntimeError("kaboom at /secret/internal/path")


def png_b64(rgb: Sequence[int], size: int = 24) -> str:
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[:] = rgb
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return base64.b64encode(data.tobytes()).decode()


def frame(rgb: Sequence[int] = RED) -> dict[str, Any]:
    return {"image_b64": png_b64(rgb), "bbox": [4, 4, 8, 8]}


@dataclass
class Setup:
    root: Path
    settings: Settings
    vectors: dict[int, np.ndarray]  # tracklet id -> stored embedding (VERSION only)
    procedure_of: dict[int, str]
    red_id: int
    other_version_id: int

    def exhaustive(
        self, query: np.ndarray, exclude: set[int] = frozenset(), only: set[int] | None = None
    ) -> list[tuple[int, float]]:
        """Brute-force cosine ranking over the same vectors."""
        ids = [i for i in self.vectors if i not in exclude and (only is None or i in only)]
        q = query / np.linalg.norm(query)
        scores = {i: float(self.vectors[i] @ q) for i in ids}
        return sorted(scores.items(), key=lambda kv: -kv[1])

    def ids_of(self, uid: str) -> set[int]:
        return {i for i, p in self.procedure_of.items() if p == uid}


def _unit_rows(rng: np.random.Generator, prefix: str, n: int) -> list[TrackletRow]:
    rows = []
    for j in range(n):
        v = rng.standard_normal(DIM).astype(np.float32)
        rows.append(
            TrackletRow(
                key=f"{prefix}/t{j}",
                start_frame=10 * j,
                end_frame=10 * j + 7,
                n_frames=8,
                embedding=v / np.linalg.norm(v),
                identity_label=f"{prefix}/polyp{j % 2}",
            )
        )
    return rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    root = tmp_path_factory.mktemp("service")
    settings = Settings(
        home=root, max_frames_per_request=MAX_FRAMES, max_k=MAX_K, max_image_bytes=20_000
    )
    store = Store(settings.database_url)
    rng = np.random.default_rng(0)
    fake = FakeEncoder()
    vectors: dict[int, np.ndarray] = {}
    procedure_of: dict[int, str] = {}
    red_id = -1
    for uid in PROCEDURES:
        rows = _unit_rows(rng, uid, PER_PROCEDURE)
        if (
            uid == "proc/a"
        ):  # one tracklet whose embedding is what the fake encoder gives red frames
            rows[0] = TrackletRow(
                key="proc/a/red",
                start_frame=0,
                end_frame=3,
                n_frames=4,
                embedding=fake.vector_for_colour(RED),
            )
        ids = store.replace_procedure(uid, "test", "synthetic", VERSION, rows)
        for tid, row in zip(ids, rows, strict=True):
            vectors[tid] = np.asarray(row.embedding, dtype=np.float32)
            procedure_of[tid] = uid
        if uid == "proc/a":
            red_id = ids[0]
    (other_id,) = store.replace_procedure(
        "proc/old", "test", "synthetic", OTHER_VERSION, _unit_rows(rng, "proc/old", 1)
    )
    # a real index snapshot on disk, which the service loads and catches up
    VectorIndex.open_or_rebuild(settings.index_dir, store, VERSION, DIM, save=True)
    store.close()
    return Setup(root, settings, vectors, procedure_of, red_id, other_id)


def _started(settings: Settings, encoder: Any, **client_kwargs: Any) -> TestClient:
    app = create_app(settings)
    if encoder is not None:
        app.state.encoder = encoder  # used instead of loading settings.model_path
    return TestClient(app, **client_kwargs)


@pytest.fixture(scope="module")
def client(setup: Setup) -> Iterator[TestClient]:
    with _started(setup.settings, FakeEncoder()) as c:
        yield c


def _search(client: TestClient, **body: Any) -> dict[str, Any]:
    r = client.post("/search", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _assert_same_ranking(results: list[dict[str, Any]], expected: list[tuple[int, float]]) -> None:
    assert [r["tracklet_id"] for r in results] == [i for i, _ in expected]
    np.testing.assert_allclose([r["score"] for r in results], [s for _, s in expected], atol=1e-5)


# -- search --------------------------------------------------------------------------------


def test_search_by_id_equals_exhaustive_search_without_itself(
    client: TestClient, setup: Setup
) -> None:
    for query_id in list(setup.vectors)[::5]:
        body = _search(client, query={"tracklet_id": query_id}, k=MAX_K)
        expected = setup.exhaustive(setup.vectors[query_id], exclude={query_id})
        assert len(expected) == len(setup.vectors) - 1
        _assert_same_ranking(body["results"], expected)
        assert body["encoder_version"] == VERSION


def test_search_results_carry_the_tracklet_rows(client: TestClient, setup: Setup) -> None:
    hit = _search(client, query={"embedding": setup.vectors[setup.red_id].tolist()}, k=1)[
        "results"
    ][0]
    assert hit == {
        "tracklet_id": setup.red_id,
        "score": pytest.approx(1.0, abs=1e-5),
        "procedure_uid": "proc/a",
        "key": "proc/a/red",
        "start_frame": 0,
        "end_frame": 3,
        "n_frames": 4,
        "identity_label": None,
        "predictions": {},
    }


def test_search_by_embedding_is_normalised(client: TestClient, setup: Setup) -> None:
    query = np.random.default_rng(5).standard_normal(DIM)
    body = _search(client, query={"embedding": (3.0 * query).tolist()}, k=7)
    _assert_same_ranking(body["results"], setup.exhaustive(query)[:7])


def test_search_by_frames_finds_the_tracklet_with_that_look(
    client: TestClient, setup: Setup
) -> None:
    results = _search(client, query={"frames": [frame(), frame()]}, k=3)["results"]
    assert results[0]["tracklet_id"] == setup.red_id
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-5)
    _assert_same_ranking(results, setup.exhaustive(setup.vectors[setup.red_id])[:3])


def test_data_url_and_line_wrapped_base64_are_accepted(client: TestClient, setup: Setup) -> None:
    b64 = png_b64(RED)
    wrapped = "data:image/png;base64," + "\n".join(b64[i : i + 60] for i in range(0, len(b64), 60))
    results = _search(client, query={"frames": [{"image_b64": wrapped, "bbox": [0, 0, 5, 5]}]}, k=1)
    assert results["results"][0]["tracklet_id"] == setup.red_id


def test_exclude_same_procedure(client: TestClient, setup: Setup) -> None:
    query_id = setup.red_id
    own = setup.ids_of("proc/a")
    body = _search(client, query={"tracklet_id": query_id}, k=MAX_K, exclude_same_procedure=True)
    _assert_same_ranking(body["results"], setup.exhaustive(setup.vectors[query_id], exclude=own))
    assert {r["procedure_uid"] for r in body["results"]} == {"proc/b", "proc/c"}


def test_exclude_tracklet_ids(client: TestClient, setup: Setup) -> None:
    query = setup.vectors[setup.red_id]
    first_two = {i for i, _ in setup.exhaustive(query)[:2]}
    body = _search(
        client, query={"embedding": query.tolist()}, k=4, exclude_tracklet_ids=sorted(first_two)
    )
    _assert_same_ranking(body["results"], setup.exhaustive(query, exclude=first_two)[:4])


@pytest.mark.parametrize("k", [3, MAX_K])
def test_procedure_filter_returns_as_many_as_available(
    client: TestClient, setup: Setup, k: int
) -> None:
    query = setup.vectors[setup.red_id]  # in proc/a, so proc/c's tracklets rank anywhere
    only = setup.ids_of("proc/c")
    body = _search(client, query={"tracklet_id": setup.red_id}, k=k, procedure_uids=["proc/c"])
    _assert_same_ranking(body["results"], setup.exhaustive(query, only=only)[:k])
    assert len(body["results"]) == min(k, PER_PROCEDURE)


def test_procedure_filter_with_the_query_procedure_excludes_itself(
    client: TestClient, setup: Setup
) -> None:
    body = _search(
        client, query={"tracklet_id": setup.red_id}, k=MAX_K, procedure_uids=["proc/a", "proc/b"]
    )
    only = setup.ids_of("proc/a") | setup.ids_of("proc/b")
    expected = setup.exhaustive(setup.vectors[setup.red_id], exclude={setup.red_id}, only=only)
    _assert_same_ranking(body["results"], expected)


def test_index_catches_up_with_procedures_indexed_and_deleted_while_serving(
    tmp_path: Path,
) -> None:
    settings = Settings(home=tmp_path, index_refresh_seconds=0)
    writer = Store(settings.database_url)
    rng = np.random.default_rng(11)
    first = writer.replace_procedure("p/1", "test", "synthetic", VERSION, _unit_rows(rng, "p/1", 3))
    query = {"query": {"embedding": [1.0] * DIM}, "k": MAX_K}
    with _started(settings, FakeEncoder()) as c:
        assert {r["tracklet_id"] for r in _search(c, **query)["results"]} == set(first)
        second = writer.replace_procedure(
            "p/2", "test", "synthetic", VERSION, _unit_rows(rng, "p/2", 2)
        )
        assert {r["tracklet_id"] for r in _search(c, **query)["results"]} == {*first, *second}
        writer.delete_procedure("p/1")
        assert {r["tracklet_id"] for r in _search(c, **query)["results"]} == set(second)
        assert c.get("/healthz").json()["index_size"] == len(second)
    writer.close()


def test_index_refresh_waits_for_its_interval(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, index_refresh_seconds=3600)
    writer = Store(settings.database_url)
    rng = np.random.default_rng(12)
    first = writer.replace_procedure("p/1", "test", "synthetic", VERSION, _unit_rows(rng, "p/1", 2))
    with _started(settings, FakeEncoder()) as c:
        writer.replace_procedure("p/2", "test", "synthetic", VERSION, _unit_rows(rng, "p/2", 2))
        body = _search(c, query={"embedding": [1.0] * DIM}, k=MAX_K)
    assert {r["tracklet_id"] for r in body["results"]} == set(first)
    writer.close()


# -- reid ----------------------------------------------------------------------------------


def test_reid_is_symmetric_and_matches_cosine(client: TestClient, setup: Setup) -> None:
    a, b = list(setup.vectors)[1], list(setup.vectors)[8]
    ab = client.post("/reid", json={"a": {"tracklet_id": a}, "b": {"tracklet_id": b}}).json()
    ba = client.post(
        "/reid", json={"a": {"tracklet_id": b}, "b": {"embedding": setup.vectors[a].tolist()}}
    ).json()
    cosine = float(setup.vectors[a] @ setup.vectors[b])
    assert ab["similarity"] == pytest.approx(cosine, abs=1e-5)
    assert ba["similarity"] == pytest.approx(ab["similarity"], abs=1e-6)
    assert ab["probability"] == pytest.approx(1.0 / (1.0 + np.exp(-cosine)), abs=1e-5)
    assert ab["threshold"] == 0.6 and ab["encoder_version"] == VERSION
    assert ab["same_polyp"] is (ab["probability"] >= 0.6)


def test_reid_frames_against_their_indexed_tracklet(client: TestClient, setup: Setup) -> None:
    r = client.post("/reid", json={"a": {"frames": [frame()]}, "b": {"tracklet_id": setup.red_id}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert body["probability"] == pytest.approx(1.0 / (1.0 + np.exp(-1.0)), abs=1e-5)
    assert body["same_polyp"] is True


def test_reid_decision_at_the_threshold(setup: Setup) -> None:
    encoder = FakeEncoder()
    body = {
        "a": {"tracklet_id": list(setup.vectors)[2]},
        "b": {"tracklet_id": list(setup.vectors)[3]},
    }
    with _started(setup.settings, encoder) as c:
        probability = c.post("/reid", json=body).json()["probability"]
        encoder.reid_threshold = probability  # exactly at the threshold: same polyp
        at = c.post("/reid", json=body).json()
        encoder.reid_threshold = float(np.nextafter(probability, 1.0))  # just above: not
        above = c.post("/reid", json=body).json()
    assert at["same_polyp"] is True and at["threshold"] == probability
    assert above["same_polyp"] is False


class SlowEncoder(FakeEncoder):
    """Records how many ``embed_tracklet`` calls run at the same time."""

    def __init__(self) -> None:
        super().__init__()
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()

    def embed_tracklet(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.05)
        with self._lock:
            self.running -= 1
        return super().embed_tracklet(images, boxes)


def test_frame_embedding_concurrency_is_bounded(setup: Setup) -> None:
    settings = setup.settings.model_copy(update={"max_concurrent_embeddings": 1})
    encoder = SlowEncoder()
    with _started(settings, encoder) as c:
        codes: list[int] = []
        body = {"a": {"frames": [frame()]}, "b": {"frames": [frame()]}}
        threads = [
            threading.Thread(target=lambda: codes.append(c.post("/reid", json=body).status_code))
            for _ in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert codes == [200, 200, 200]
    assert encoder.most == 1


# -- health --------------------------------------------------------------------------------


def test_healthz_ok(client: TestClient, setup: Setup) -> None:
    body = client.get("/healthz").json()
    missing = body.pop("missing_probes")
    assert body == {
        "status": "ok",  # probes are optional: none installed is not "degraded"
        "encoder_version": VERSION,
        "embedding_dim": DIM,
        "index_size": len(setup.vectors),
        "store_ok": True,
        "reasons": [],
        "probes": {},
    }
    assert set(missing) == {"size", "histology"}
    assert "polypindex probe train size" in missing["size"]


def test_healthz_degraded_without_model_file(setup: Setup) -> None:
    with _started(setup.settings, None) as c:
        r = c.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "degraded" and body["encoder_version"] is None
    assert body["store_ok"] is True and body["index_size"] is None
    assert any(
        "polypindex demo" in reason and "encoder.onnx" in reason for reason in body["reasons"]
    )


def test_healthz_degraded_with_an_empty_index(tmp_path: Path) -> None:
    with _started(Settings(home=tmp_path), FakeEncoder()) as c:
        body = c.get("/healthz").json()
        r = c.post("/search", json={"query": {"embedding": [1.0] * DIM}})
    assert body["status"] == "degraded" and body["index_size"] == 0
    assert any("polypindex index" in reason for reason in body["reasons"])
    _assert_error(r, 503, "not_ready")


def test_openapi_documents_examples_and_error_body(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    search = spec["paths"]["/search"]["post"]
    examples = search["requestBody"]["content"]["application/json"]["examples"]
    assert {"by_id", "by_frames", "by_embedding"} <= set(examples)
    assert "ErrorBody" in str(search["responses"]["422"])
    assert (
        "examples" in spec["paths"]["/reid"]["post"]["requestBody"]["content"]["application/json"]
    )


# -- one test per error path ---------------------------------------------------------------


def _assert_error(r: Any, status: int, code: str, *in_message: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    for text in in_message:
        assert text in body["error"]["message"]
    return str(body["error"]["message"])


def test_unknown_tracklet_id_is_404(client: TestClient) -> None:
    r = client.post("/search", json={"query": {"tracklet_id": 987654}})
    _assert_error(r, 404, "tracklet_not_found", "987654")


def test_unknown_tracklet_id_in_reid_is_404(client: TestClient, setup: Setup) -> None:
    r = client.post(
        "/reid", json={"a": {"tracklet_id": setup.red_id}, "b": {"tracklet_id": 987654}}
    )
    _assert_error(r, 404, "tracklet_not_found", "987654")


def test_unknown_procedure_uid_is_404(client: TestClient, setup: Setup) -> None:
    r = client.post(
        "/search", json={"query": {"tracklet_id": setup.red_id}, "procedure_uids": ["proc/zzz"]}
    )
    _assert_error(r, 404, "procedure_not_found", "proc/zzz")


def test_no_query_kind_is_422(client: TestClient) -> None:
    r = client.post("/search", json={"query": {}})
    _assert_error(
        r,
        422,
        "validation_error",
        "body.query",
        "exactly one of tracklet_id, frames, embedding",
        "got none",
    )


def test_two_query_kinds_is_422(client: TestClient) -> None:
    r = client.post("/search", json={"query": {"tracklet_id": 1, "embedding": [1.0] * DIM}})
    _assert_error(r, 422, "validation_error", "body.query", "got tracklet_id and embedding")


def test_missing_query_is_422(client: TestClient) -> None:
    _assert_error(client.post("/search", json={"k": 3}), 422, "validation_error", "body.query")


def test_unknown_query_field_is_422(client: TestClient) -> None:
    r = client.post("/search", json={"query": {"tracklet": 1}})
    _assert_error(r, 422, "validation_error", "body.query.tracklet")


@pytest.mark.parametrize(
    "bbox", [[1, 2, 0, 5], [1, 2, 5, -1], [1, 2, 3]], ids=["zero_w", "neg_h", "three"]
)
def test_bad_bbox_is_422(client: TestClient, bbox: list[float]) -> None:
    frames = [frame(), {"image_b64": png_b64(RED), "bbox": bbox}]
    r = client.post("/search", json={"query": {"frames": frames}})
    _assert_error(r, 422, "validation_error", "body.query.frames.1.bbox")


def test_non_finite_bbox_is_422(client: TestClient) -> None:
    content = '{"query": {"frames": [{"image_b64": "AAAA", "bbox": [1, 2, NaN, 4]}]}}'
    r = client.post("/search", content=content, headers={"content-type": "application/json"})
    _assert_error(r, 422, "validation_error", "body.query.frames.0.bbox")


def test_bad_base64_is_422_naming_the_frame(client: TestClient) -> None:
    frames = [frame(), {"image_b64": "this is *not* base64!", "bbox": [0, 0, 4, 4]}]
    r = client.post("/search", json={"query": {"frames": frames}})
    _assert_error(r, 422, "invalid_input", "body.query.frames.1.image_b64", "base64")


def test_undecodable_image_is_422_naming_the_frame(client: TestClient) -> None:
    garbage = base64.b64encode(b"GIF89a? not really an image").decode()
    frames = [frame(), frame(), {"image_b64": garbage, "bbox": [0, 0, 4, 4]}]
    r = client.post("/reid", json={"a": {"tracklet_id": 1}, "b": {"frames": frames}})
    _assert_error(r, 422, "invalid_input", "body.b.frames.2.image_b64", "decod")


def test_image_over_the_size_limit_is_422(client: TestClient) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (120, 120, 3), dtype=np.uint8)
    big = base64.b64encode(cv2.imencode(".png", noise)[1].tobytes()).decode()
    r = client.post(
        "/search", json={"query": {"frames": [{"image_b64": big, "bbox": [0, 0, 9, 9]}]}}
    )
    _assert_error(r, 422, "invalid_input", "body.query.frames.0.image_b64", "20000 bytes")


def test_wrong_embedding_dim_is_422(client: TestClient) -> None:
    r = client.post("/search", json={"query": {"embedding": [0.1] * (DIM + 1)}})
    _assert_error(
        r, 422, "validation_error", "body.query.embedding", f"expects {DIM}", f"{DIM + 1} values"
    )


def test_zero_embedding_is_422(client: TestClient) -> None:
    r = client.post("/reid", json={"a": {"embedding": [0.0] * DIM}, "b": {"tracklet_id": 1}})
    _assert_error(r, 422, "validation_error", "body.a.embedding", "zeros")


@pytest.mark.parametrize("k", [0, -3, MAX_K + 1])
def test_k_out_of_range_is_422(client: TestClient, k: int) -> None:
    r = client.post("/search", json={"query": {"tracklet_id": 1}, "k": k})
    _assert_error(r, 422, "validation_error", "body.k")


def test_too_many_frames_is_422(client: TestClient) -> None:
    r = client.post("/search", json={"query": {"frames": [frame()] * (MAX_FRAMES + 1)}})
    _assert_error(r, 422, "validation_error", "body.query.frames", f"at most {MAX_FRAMES}")


def test_empty_frames_is_422(client: TestClient) -> None:
    _assert_error(
        client.post("/search", json={"query": {"frames": []}}),
        422,
        "validation_error",
        "body.query.frames",
    )


def test_malformed_json_is_422(client: TestClient) -> None:
    r = client.post("/search", content=b"{not json", headers={"content-type": "application/json"})
    _assert_error(r, 422, "validation_error")


def test_tracklet_of_another_encoder_version_is_409(client: TestClient, setup: Setup) -> None:
    r = client.post("/search", json={"query": {"tracklet_id": setup.other_version_id}})
    _assert_error(r, 409, "encoder_mismatch", OTHER_VERSION, VERSION)


def test_model_missing_is_503(setup: Setup) -> None:
    with _started(setup.settings, None) as c:
        search = c.post("/search", json={"query": {"tracklet_id": setup.red_id}})
        reid = c.post("/reid", json={"a": {"tracklet_id": 1}, "b": {"tracklet_id": 2}})
    for r in (search, reid):
        _assert_error(r, 503, "not_ready", "encoder model not loaded", "polypindex demo")


def test_corrupt_model_file_starts_degraded_and_answers_503(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    settings.model_path.parent.mkdir(parents=True)
    settings.model_path.write_bytes(b"not an onnx model")
    with _started(settings, None) as c:
        health = c.get("/healthz").json()
        r = c.post("/reid", json={"a": {"embedding": [1.0]}, "b": {"embedding": [1.0]}})
    assert health["status"] == "degraded" and health["encoder_version"] is None
    _assert_error(r, 503, "not_ready", str(settings.model_path), "polypindex demo")


def test_database_missing_is_503(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path, database_url="sqlite:///" + str(tmp_path / "a-file" / "x.db")
    )
    (tmp_path / "a-file").write_text("not a folder")
    with _started(settings, FakeEncoder()) as c:
        health = c.get("/healthz").json()
        r = c.post("/search", json={"query": {"embedding": [1.0] * DIM}})
    assert health["status"] == "degraded" and health["store_ok"] is False
    _assert_error(r, 503, "not_ready", "database")


def test_unexpected_exception_is_500_without_internals(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.ERROR),
        _started(setup.settings, ExplodingEncoder(), raise_server_exceptions=False) as c,
    ):
        r = c.post("/search", json={"query": {"frames": [frame()]}})
    message = _assert_error(r, 500, "internal_error")
    assert "kaboom" not in r.text and "Traceback" not in r.text and "secret" not in r.text
    assert "server log" in message
    assert "kaboom" in caplog.text  # the traceback went to the log


def test_dependency_override_replaces_the_encoder(client: TestClient) -> None:
    app = client.app
    app.dependency_overrides[get_encoder] = lambda: FakeEncoder(reid_threshold=0.0)  # type: ignore[attr-defined]
    try:
        body = client.post("/reid", json={"a": {"tracklet_id": 1}, "b": {"tracklet_id": 2}}).json()
    finally:
        app.dependency_overrides.clear()  # type: ignore[attr-defined]
    assert body["threshold"] == 0.0 and body["same_polyp"] is True


def test_unknown_route_uses_the_error_body(client: TestClient) -> None:
    _assert_error(client.get("/nope"), 404, "not_found")
