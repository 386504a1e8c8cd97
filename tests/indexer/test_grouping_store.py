"""Stored polyp entities: written per procedure, replaced on re-grouping, gone with
their procedure, aggregated for ``GET /procedures/{uid}/polyps``, computed by the
indexing pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.indexing import TRACKLETS, FakeEncoder, write_coco

from polypindex.indexer.embed import summarize_boxes
from polypindex.indexer.grouping import group_procedure, group_stored, procedure_polyps
from polypindex.indexer.pipeline import delete_procedure, index_dataset
from polypindex.indexer.store import Store
from polypindex.indexer.store_entities import entity_ids
from polypindex.indexer.tables import PredictionRow, TrackletRow
from polypindex.model.core.errors import ProcedureNotFoundError
from polypindex.model.scoring.calibration import Calibration
from polypindex.model.scoring.cosine_curve import CosineCalibration

VERSION = "fake-v1"


def _unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32)
    return a / np.linalg.norm(a)


def _row(key: str, start: int, n: int, emb: list[float], x: float, **kw: object) -> TrackletRow:
    frames = np.arange(start, start + n)
    boxes = np.tile([x, 10.0, 30.0, 30.0], (n, 1))
    return TrackletRow(
        key=key,
        start_frame=start,
        end_frame=start + n - 1,
        n_frames=n,
        embedding=_unit(emb),
        boxes=summarize_boxes(frames, boxes),
        **kw,  # type: ignore[arg-type]
    )


def _size(label: str, p: float) -> tuple[PredictionRow, ...]:
    return (PredictionRow("size", label, p, "probe-size-1"),)


def _procedure() -> list[TrackletRow]:
    # polyp A: a0, a1 (alike); polyp B: b0, b1; "twin" looks like A but is on screen
    # together with a0 in another place, so it can never be A
    return [
        _row(
            "a0",
            0,
            20,
            [1, 0, 0],
            0,
            thumbnail_path="t/a0.jpg",
            predictions=_size("diminutive", 0.9),
        ),
        _row("b0", 40, 10, [0, 1, 0], 0, predictions=_size("non_diminutive", 0.2)),
        _row(
            "a1",
            60,
            30,
            [1, 0.05, 0],
            0,
            thumbnail_path="t/a1.jpg",
            predictions=_size("diminutive", 0.7),
        ),
        _row("b1", 100, 10, [0.05, 1, 0], 0),
        _row("twin", 5, 10, [1, 0, 0.02], 200),
    ]


@pytest.fixture
def store(db_url: str) -> Store:
    s = Store(db_url)
    s.replace_procedure("p1", "ds", "test", VERSION, _procedure())
    s.replace_procedure("p2", "ds", "test", VERSION, _procedure()[:2])
    return s


def _by_key(store: Store, uid: str) -> dict[str, int]:
    polyps = procedure_polyps(store, uid)
    records = store.get_tracklets(t for e in polyps.entities for t in e.tracklet_ids)
    return {records[t].key: e.entity_id for e in polyps.entities for t in e.tracklet_ids}


def test_group_store_and_read_back(store: Store) -> None:
    before = procedure_polyps(store, "p1")
    assert not before.grouped and before.entities == [] and len(before.ungrouped_tracklet_ids) == 5
    # uncalibrated: sigmoid(cosine), cut at the model's threshold
    report = group_procedure(store, "p1", VERSION, None, reid_threshold=0.6)
    assert (report.tracklets, report.calibrated, report.cut) == (5, False, 0.6)
    by_key = _by_key(store, "p1")
    assert by_key["a0"] == by_key["a1"] and by_key["b0"] == by_key["b1"]
    assert by_key["twin"] != by_key["a0"]  # the temporal constraint
    assert len(set(by_key.values())) == report.entities == 3
    polyps = procedure_polyps(store, "p1")
    assert polyps.grouped and polyps.method == "average" and polyps.ungrouped_tracklet_ids == []
    a = next(e for e in polyps.entities if e.entity_id == by_key["a0"])
    assert a.entity_id == 0  # first by first frame
    assert (a.start_frame, a.end_frame, a.n_frames) == (0, 89, 50)
    assert a.spans == [[0, 19], [60, 89]]
    ids = {store.get_tracklet(t).key: t for t in a.tracklet_ids}
    assert a.thumbnail_tracklet_id == ids["a1"]  # the longest with a thumbnail
    size = a.predictions["size"]
    assert size["label"] == "diminutive" and size["n_tracklets"] == 2
    assert size["probability"] == pytest.approx((0.9 * 20 + 0.7 * 30) / 50)
    assert entity_ids(store, ids.values()) == {t: 0 for t in ids.values()}


def test_regrouping_replaces_rows_and_uses_the_calibration(store: Store) -> None:
    group_procedure(store, "p1", VERSION, None, reid_threshold=0.6)
    # a legacy (pooled) curve, never above its cut 0.2
    strict = Calibration.from_cosine(CosineCalibration("platt", {"a": 1.0, "b": -10.0}, 0.5))
    report = group_procedure(store, "p1", VERSION, strict)
    assert report.calibrated and report.entities == 5
    polyps = procedure_polyps(store, "p1")
    assert polyps.calibrated is True and polyps.cut == 0.2 and len(polyps.entities) == 5
    assert sum(len(e.tracklet_ids) for e in polyps.entities) == 5  # old rows replaced


def test_group_stored_reindex_and_delete(store: Store) -> None:
    reports = group_stored(store, VERSION, None)
    assert [r.uid for r in reports] == ["p1", "p2"]
    old = store.tracklet_ids_for_procedure("p2")
    store.replace_procedure("p2", "ds", "test", VERSION, _procedure()[:2])
    assert entity_ids(store, old) == {}  # the old tracklets' rows left with them
    assert not procedure_polyps(store, "p2").grouped
    store.delete_procedure("p1")
    with pytest.raises(ProcedureNotFoundError):
        procedure_polyps(store, "p1")
    with pytest.raises(ProcedureNotFoundError):
        group_procedure(store, "p1", VERSION, None)


def test_the_pipeline_groups_each_procedure_it_writes(tmp_path: Path) -> None:
    dataset = write_coco(tmp_path / "data", p1_labels=True)
    store = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    index_dir = tmp_path / "index"
    index_dataset(dataset, "test", store, index_dir, FakeEncoder(), TRACKLETS, progress=False)
    one = procedure_polyps(store, "ds:001")
    # its two polyps share their frames in different places: two entities
    assert one.grouped and len(one.entities) == 2
    assert procedure_polyps(store, "ds:002").grouped
    delete_procedure("ds:001", store, index_dir)
    assert entity_ids(store, [t for e in one.entities for t in e.tracklet_ids]) == {}


def test_cli_index_group_regroups_with_the_model_calibration(tmp_path: Path) -> None:
    import json

    from helpers.onnx_graphs import onnx_metadata, write_mean_colour_encoder
    from typer.testing import CliRunner

    from polypindex.cli import app
    from polypindex.model.data.config import FragmentConfig, PreprocessConfig

    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    store = Store(url)
    store.replace_procedure("p1", "ds", "test", VERSION, _procedure())
    cal = CosineCalibration("platt", {"a": 20.0, "b": -10.0}, 0.5)  # a legacy curve: cut 0.2
    meta = onnx_metadata(
        VERSION, PreprocessConfig(im_size=8), FragmentConfig(fragment_length=-1), 3, "0.6"
    )
    meta["polypindex.reid_calibration"] = cal.to_json()
    weight = np.eye(3, dtype=np.float32)
    model = write_mean_colour_encoder(
        tmp_path / "m.onnx", weight, np.zeros(3, np.float32), meta, im_size=8
    )
    args = ["index", "group", "--model", str(model), "--database-url", url, "--home", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, "--procedure", "p1"])
    assert result.exit_code == 0, result.output
    (report,) = json.loads(result.output)
    assert report["uid"] == "p1" and report["calibrated"] is True and report["cut"] == 0.2
    assert report["entities"] == 3
    assert procedure_polyps(store, "p1").calibrated is True
    bad = CliRunner().invoke(app, [*args, "--method", "kmeans"])
    assert bad.exit_code == 1 and "--method" in bad.output
    missing = CliRunner().invoke(app, [*args, "--procedure", "nope"])
    assert missing.exit_code == 1 and "nope" in missing.output
