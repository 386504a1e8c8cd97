"""Import of an export bundle into a store, without re-embedding (the format and the
checks: :mod:`indexer.exchange`, docs/inputs.md#export-and-import)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from polypindex.indexer.exchange import (
    COLUMNS,
    FORMAT,
    MANIFEST,
    NORM_TOLERANCE,
    OPTIONAL_FILES,
    REQUIRED_FILES,
    file_sha256,
    pyarrow_modules,
)
from polypindex.indexer.generations import open_or_rebuild
from polypindex.indexer.store import Store
from polypindex.indexer.store_entities import replace_entities
from polypindex.indexer.tables import PredictionRow, TrackletRow
from polypindex.model.core.errors import EncoderMismatchError, InvalidInputError


@dataclass
class ImportReport:
    """What :func:`import_bundle` did."""

    encoder_version: str
    procedures_imported: list[str] = field(default_factory=list)
    procedures_skipped: list[str] = field(default_factory=list)
    tracklets: int = 0
    predictions: int = 0
    grouped: int = 0
    index_size: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The bundle's manifest, after checking its format and every file's checksum.

    Raises:
        InvalidInputError: no manifest, another format, a required file missing, or a
            file whose bytes do not match the manifest.
    """
    root = Path(folder)
    path = root / MANIFEST
    if not path.is_file():
        raise InvalidInputError(f"not an export bundle: no {MANIFEST} in the folder")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{MANIFEST} is not readable JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise InvalidInputError(f"{MANIFEST}: format must be {FORMAT!r}, got {got!r}")
    for key in ("encoder_version", "embedding_dim", "files"):
        if key not in manifest:
            raise InvalidInputError(f"{MANIFEST}: missing {key!r}")
    files = manifest["files"]
    for name in REQUIRED_FILES:
        if name not in files:
            raise InvalidInputError(f"{MANIFEST}: the bundle must list {name}")
    for name, digest in files.items():
        if name not in (*REQUIRED_FILES, *OPTIONAL_FILES):
            raise InvalidInputError(f"{MANIFEST}: unknown file {name!r}")
        if not (root / name).is_file():
            raise InvalidInputError(f"the bundle lists {name} but it is missing")
        if file_sha256(root / name) != digest:
            raise InvalidInputError(f"{name} does not match its checksum in {MANIFEST}")
    return manifest


def _rows(folder: Path, name: str, files: dict[str, str]) -> list[dict]:
    columns = tuple(COLUMNS[name])
    if name not in files:
        return []
    _, pq = pyarrow_modules()
    try:
        table = pq.read_table(folder / name)
    except Exception as exc:
        raise InvalidInputError(f"{name} is not a readable Parquet file: {exc}") from exc
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InvalidInputError(f"{name}: missing columns {missing}")
    return list(table.select(list(columns)).to_pylist())


def _embedding(row: dict[str, Any], dim: int, where: str) -> np.ndarray:
    vector = np.asarray(row["embedding"], dtype=np.float32)
    if vector.shape != (dim,):
        raise InvalidInputError(f"{where}: embedding has {vector.size} values, expected {dim}")
    if not np.isfinite(vector).all():
        raise InvalidInputError(f"{where}: embedding holds NaN or infinity")
    norm = float(np.linalg.norm(vector))
    if abs(norm - 1.0) > NORM_TOLERANCE:
        raise InvalidInputError(f"{where}: embedding must be L2-normalised (norm {norm:.4f})")
    return vector


def _tracklet_row(row: dict[str, Any], dim: int, where: str) -> TrackletRow:
    try:
        boxes = json.loads(row["boxes_json"] or "{}")
        start, end, n = int(row["start_frame"]), int(row["end_frame"]), int(row["n_frames"])
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{where}: {exc}") from exc
    if not isinstance(boxes, dict):
        raise InvalidInputError(f"{where}: boxes_json must be a JSON object")
    if not (0 <= start <= end and n >= 1):
        raise InvalidInputError(f"{where}: frames must satisfy 0 <= start <= end, n >= 1")
    size = row.get("size_mm")
    return TrackletRow(
        key=str(row["key"]),
        start_frame=start,
        end_frame=end,
        n_frames=n,
        embedding=_embedding(row, dim, where),
        boxes=boxes,
        identity_label=row.get("identity_label"),
        size_mm=None if size is None or (isinstance(size, float) and math.isnan(size)) else size,
        histology=row.get("histology"),
    )


def _prediction(row: dict[str, Any], where: str) -> PredictionRow:
    p = row["probability"]
    if p is None or not 0.0 <= float(p) <= 1.0:
        raise InvalidInputError(f"{where}: probability must lie in [0, 1], got {p!r}")
    return PredictionRow(str(row["task"]), str(row["label"]), float(p), str(row["probe_version"]))


def import_bundle(
    store: Store,
    folder: str | Path,
    index_dir: str | Path,
    *,
    expected_version: str | None,
    force: bool = False,
    on_procedure: Callable[[str], None] | None = None,
) -> ImportReport:
    """Add the bundle in ``folder`` to ``store`` and its index generation.

    Args:
        store: the target store.
        folder: the bundle (a folder; unpack a downloaded zip first).
        index_dir: the target's index root (the generation catches up at the end).
        expected_version: the encoder version the target serves; a bundle of another
            version is refused. ``None``: take the bundle's (a store without a model).
        force: replace procedures already stored with this version (default: skip them).
        on_procedure: called with each uid as it is written.

    Raises:
        InvalidInputError: a malformed bundle (the file and row are named); nothing of
            the procedure concerned is written.
        EncoderMismatchError: the bundle's encoder version is not ``expected_version``.
    """
    root = Path(folder)
    manifest = read_manifest(root)
    version = str(manifest["encoder_version"])
    dim = int(manifest["embedding_dim"])
    if expected_version is not None and version != expected_version:
        raise EncoderMismatchError(
            f"the bundle holds embeddings of encoder {version!r}, but this store serves "
            f"{expected_version!r}: import it where that model serves, or re-index the "
            f"procedures with this model"
        )
    files = manifest["files"]
    procedures = _rows(root, "procedures.parquet", files)
    tracklets = _rows(root, "tracklets.parquet", files)
    by_procedure: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for i, row in enumerate(tracklets):
        by_procedure.setdefault(str(row["procedure_uid"]), []).append((i, row))
    predictions: dict[tuple[str, str], list[PredictionRow]] = {}
    pred_rows = _rows(root, "predictions.parquet", files)
    for i, row in enumerate(pred_rows):
        where = f"predictions.parquet row {i}"
        predictions.setdefault((str(row["procedure_uid"]), str(row["key"])), []).append(
            _prediction(row, where)
        )
    entity_rows = _rows(root, "entities.parquet", files)
    entities: dict[str, list[dict[str, Any]]] = {}
    for row in entity_rows:
        entities.setdefault(str(row["procedure_uid"]), []).append(row)
    uids = [str(p["uid"]) for p in procedures]
    unknown = sorted(set(by_procedure) - set(uids))
    if unknown:
        raise InvalidInputError(f"tracklets.parquet: procedure {unknown[0]!r} is not listed")
    report = ImportReport(version)
    plan = []  # every procedure checked before anything is written
    for proc in procedures:
        uid = str(proc["uid"])
        if store.has_procedure(uid, version) and not force:
            report.procedures_skipped.append(uid)
            continue
        rows: list[TrackletRow] = []
        for i, row in by_procedure.get(uid, []):
            where = f"tracklets.parquet row {i} ({uid}/{row['key']})"
            tracklet = _tracklet_row(row, dim, where)
            if any(r.key == tracklet.key for r in rows):
                raise InvalidInputError(f"{where}: key appears twice in its procedure")
            rows.append(
                replace(tracklet, predictions=tuple(predictions.get((uid, tracklet.key), ())))
            )
        keys = {r.key for r in rows}
        stray = [k for (u, k) in predictions if u == uid and k not in keys]
        stray += [m["key"] for m in entities.get(uid, []) if m["key"] not in keys]
        if stray:
            raise InvalidInputError(f"{uid}/{stray[0]}: a prediction or entity without a tracklet")
        plan.append((uid, str(proc["dataset_id"]), str(proc["source"]), rows))
    for uid, dataset_id, source, rows in plan:
        ids = store.replace_procedure(uid, dataset_id, source, version, rows)
        report.procedures_imported.append(uid)
        report.tracklets += len(ids)
        report.predictions += sum(len(r.predictions) for r in rows)
        members = entities.get(uid, [])
        if members:
            id_of = {row.key: tid for row, tid in zip(rows, ids, strict=True)}
            first = members[0]
            replace_entities(
                store,
                store.get_procedure(uid, version).id,
                version,
                {id_of[m["key"]]: int(m["entity"]) for m in members},
                method=str(first["method"]),
                cut=float(first["cut"]),
                calibrated=bool(first["calibrated"]),
            )
            report.grouped += 1
        if on_procedure is not None:
            on_procedure(uid)
    index = open_or_rebuild(index_dir, store, version, dim, save=True)
    report.index_size = len(index)
    return report
