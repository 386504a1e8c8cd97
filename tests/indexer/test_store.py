"""indexer.store on SQLite and PostgreSQL: round trip, idempotent replace, delete."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
from helpers.rows import random_row

from polypindex.indexer.store import Store
from polypindex.indexer.tables import PredictionRow, TrackletRow
from polypindex.model.core.errors import (
    ConflictError,
    InvalidInputError,
    ProcedureNotFoundError,
    TrackletNotFoundError,
)

DIM = 8


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    try:
        yield s
    finally:
        s.close()


def _rows(n: int, seed: int = 0, prefix: str = "seq/p") -> list[TrackletRow]:
    rng = np.random.default_rng(seed)
    return [
        random_row(
            rng,
            DIM,
            f"{prefix}{i}/0",
            10 * i,
            6,
            boxes={"first": [1.0, 2.0, 3.0, 4.0], "frame_ids": list(range(10 * i, 10 * i + 6))},
            identity_label=f"p{i}",
            thumbnail_path=f"thumbnails/x/{i}.jpg",
            size_mm=3.5 if i == 0 else None,
            histology="adenoma" if i == 0 else None,
        )
        for i in range(n)
    ]


def test_round_trip(store: Store) -> None:
    rows = _rows(3)
    ids = store.replace_procedure("ds:001", "ds", "/data/ann.json", "enc-a", rows)
    assert len(ids) == 3 and len(set(ids)) == 3
    rec = store.get_tracklet(ids[0])
    assert rec.id == ids[0] and rec.procedure_uid == "ds:001" and rec.key == rows[0].key
    assert rec.identity_label == "p0" and rec.encoder_version == "enc-a"
    assert (rec.start_frame, rec.end_frame, rec.n_frames) == (0, 5, 6)
    assert rec.boxes == rows[0].boxes
    assert rec.thumbnail_path == "thumbnails/x/0.jpg"
    assert rec.size_mm == pytest.approx(3.5) and rec.histology == "adenoma"
    assert rec.embedding.dtype == np.float32 and rec.embedding.shape == (DIM,)
    np.testing.assert_array_equal(rec.embedding, rows[0].embedding)
    assert store.get_tracklet(ids[1]).size_mm is None

    assert set(store.get_tracklets([*ids, 999_999])) == set(ids)
    assert store.tracklet_ids_for_procedure("ds:001") == sorted(ids)
    assert store.has_procedure("ds:001", "enc-a") and store.has_procedure("ds:001")
    assert not store.has_procedure("ds:001", "enc-b") and not store.has_procedure("ds:002")
    assert store.count_tracklets() == 3 and store.count_tracklets("enc-b") == 0
    assert store.encoder_versions() == ["enc-a"]
    assert store.max_tracklet_id() == max(ids)
    (proc,) = store.list_procedures()
    assert (proc.uid, proc.dataset_id, proc.source, proc.n_tracklets) == (
        "ds:001",
        "ds",
        "/data/ann.json",
        3,
    )

    got_ids, got_vecs = zip(*store.iter_embeddings("enc-a", batch=2), strict=True)
    assert [len(b) for b in got_ids] == [2, 1]
    np.testing.assert_array_equal(np.concatenate(got_ids), sorted(ids))
    np.testing.assert_array_equal(np.concatenate(got_vecs), np.stack([r.embedding for r in rows]))
    after = list(store.iter_embeddings("enc-a", after_id=ids[1]))
    assert [int(i) for b, _ in after for i in b] == [ids[2]]
    with pytest.raises(TrackletNotFoundError):
        store.get_tracklet(999_999)


def test_replace_is_idempotent_and_ids_are_never_reused(store: Store) -> None:
    first = store.replace_procedure("001", None, "src", "enc-a", _rows(3))
    second = store.replace_procedure("001", None, "src", "enc-a", _rows(3))
    assert store.count_tracklets() == 3
    assert len(store.list_procedures()) == 1
    assert store.tracklet_ids_for_procedure("001") == sorted(second)
    assert min(second) > max(first), "row ids must never be reused (FAISS catch-up relies on it)"
    assert not store.get_tracklets(first)


def test_replace_checks_rows_and_rolls_back(store: Store) -> None:
    store.replace_procedure("001", None, "src", "enc-a", _rows(2))
    dup = _rows(2)
    with pytest.raises(InvalidInputError, match="duplicate"):
        store.replace_procedure("001", None, "src", "enc-a", [dup[0], dup[0]])
    bad = TrackletRow(
        key="k", start_frame=0, end_frame=1, n_frames=2, embedding=np.full(DIM, np.nan)
    )
    with pytest.raises(InvalidInputError, match="NaN"):
        store.replace_procedure("001", None, "src", "enc-a", [bad])
    assert store.count_tracklets() == 2


def test_delete(store: Store) -> None:
    keep = store.replace_procedure("001", None, "src", "enc-a", _rows(2))
    gone = store.replace_procedure("002", None, "src", "enc-b", _rows(3, seed=1))
    assert store.encoder_versions() == ["enc-a", "enc-b"]
    assert sorted(store.delete_procedure("002")) == sorted(gone)
    assert store.count_tracklets() == 2 and not store.has_procedure("002")
    assert set(store.get_tracklets(keep + gone)) == set(keep)
    with pytest.raises(ProcedureNotFoundError, match="002"):
        store.delete_procedure("002")
    with pytest.raises(ProcedureNotFoundError):
        store.get_procedure("nope")
    # a procedure with no tracklets is still a procedure
    assert store.replace_procedure("003", None, "src", "enc-a", []) == []
    assert store.has_procedure("003", "enc-a") and store.delete_procedure("003") == []


def test_tracklet_ids_and_embeddings_for_ids(store: Store) -> None:
    a = store.replace_procedure("001", None, "src", "enc-a", _rows(2))
    b = store.replace_procedure("002", None, "src", "enc-b", _rows(2, seed=3))
    np.testing.assert_array_equal(store.tracklet_ids("enc-a"), sorted(a))
    ids, vecs = store.embeddings_for_ids([b[1], 999_999, a[0]])
    np.testing.assert_array_equal(ids, sorted([a[0], b[1]]))
    assert vecs.shape == (2, DIM)


def test_a_procedure_per_encoder_generation(store: Store) -> None:
    a = store.replace_procedure("P", None, "s", "enc-a", _rows(2))
    b = store.replace_procedure("P", None, "s", "enc-b", _rows(3, seed=1))
    assert store.tracklet_ids("enc-a").tolist() == a and store.tracklet_ids("enc-b").tolist() == b
    a2 = store.replace_procedure("P", None, "s", "enc-a", _rows(1))  # only enc-a is replaced
    assert store.tracklet_ids("enc-a").tolist() == a2 and store.tracklet_ids("enc-b").tolist() == b
    assert store.get_procedure("P", "enc-b").n_tracklets == 3
    assert len(store.list_procedures()) == 2 and len(store.list_procedures("enc-a")) == 1
    assert store.delete_procedure("P", "enc-a") == a2 and store.has_procedure("P", "enc-b")
    assert store.delete_procedure("P") == b and not store.has_procedure("P")


@pytest.mark.postgres
def test_two_writers_on_one_procedure_is_a_clear_conflict(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writer A starts replacing P1; writer B commits P1 first; A gets ConflictError, B stands."""
    first, second = Store(pg_url), Store(pg_url)
    try:
        original = Store._delete_procedure
        interleaved: list[str] = []

        def delete_then_let_the_other_writer_commit(
            session: object, uid: str, version: str | None = None
        ) -> list[int] | None:
            deleted = original(session, uid, version)  # type: ignore[arg-type]
            if not interleaved:  # only inside the first writer's transaction
                interleaved.append(uid)
                second.replace_procedure(uid, "ds", "other", "enc-a", _rows(2, seed=7))
            return deleted

        monkeypatch.setattr(
            Store, "_delete_procedure", staticmethod(delete_then_let_the_other_writer_commit)
        )
        with pytest.raises(ConflictError, match="written by another indexer"):
            first.replace_procedure("P1", "ds", "mine", "enc-a", _rows(3))
        monkeypatch.undo()
        assert first.get_procedure("P1", "enc-a").source == "other"
        assert len(first.tracklet_ids_for_procedure("P1")) == 2
    finally:
        first.close()
        second.close()


def test_predictions_are_written_with_their_rows_and_leave_with_them(store: Store) -> None:
    rows = _rows(3)
    rows[0] = replace(
        rows[0],
        predictions=(
            PredictionRow("size", "diminutive", 0.8, "probe-s1"),
            PredictionRow("histology", "adenoma", 0.6, "probe-h1"),
        ),
    )
    rows[1] = replace(
        rows[1], predictions=(PredictionRow("size", "non_diminutive", 0.1, "probe-s1"),)
    )
    ids = store.replace_procedure("P1", "ds", "src", "enc-a", rows)
    got = store.predictions_for(ids)
    assert set(got) == {ids[0], ids[1]}
    assert got[ids[0]]["size"] == PredictionRow("size", "diminutive", 0.8, "probe-s1")
    assert got[ids[0]]["histology"].label == "adenoma"
    assert store.tracklet_ids_with_prediction("size", "diminutive") == {ids[0]}
    assert store.tracklet_ids_with_prediction("size", "diminutive", "enc-b") == set()
    assert store.count_predictions("enc-a") == {"size": 2, "histology": 1}
    # a new probe version re-predicts existing rows; ids no longer stored are skipped
    written = store.replace_predictions(
        "size",
        {
            ids[1]: PredictionRow("size", "diminutive", 0.7, "probe-s2"),
            ids[2]: PredictionRow("size", "diminutive", 0.9, "probe-s2"),
            10_000: PredictionRow("size", "diminutive", 0.9, "probe-s2"),
        },
    )
    assert written == 2
    assert store.tracklet_ids_with_prediction("size", "diminutive") == set(ids)
    assert store.predictions_for([ids[1]])[ids[1]]["size"].probe_version == "probe-s2"
    # re-indexing the procedure replaces its predictions; deleting it removes them
    new_ids = store.replace_procedure("P1", "ds", "src", "enc-a", _rows(1))
    assert store.predictions_for(ids + new_ids) == {}
    store.delete_procedure("P1")
    assert store.count_predictions() == {}


def test_bad_predictions_roll_the_procedure_back(store: Store) -> None:
    rows = [replace(_rows(1)[0], predictions=(PredictionRow("size", "diminutive", 1.5, "p"),))]
    with pytest.raises(InvalidInputError, match=r"probability in \[0, 1\]"):
        store.replace_procedure("P1", "ds", "src", "enc-a", rows)
    assert not store.has_procedure("P1")
    with pytest.raises(InvalidInputError, match="another task"):
        store.replace_predictions("size", {1: PredictionRow("histology", "adenoma", 0.5, "p")})
