"""Export and import of an index generation as Parquet (docs/inputs.md#export-and-import).

An **export bundle** is a folder holding, for one encoder version:

- ``manifest.json``: the format (:data:`FORMAT`), encoder version, embedding size, row
  counts, when and by which release it was written, and the SHA-256 of every file;
- ``procedures.parquet``: one row per procedure (``uid``, ``dataset_id``, ``source``,
  ``created_at``);
- ``tracklets.parquet``: one row per tracklet (``procedure_uid``, ``key``, frames, the
  boxes summary as JSON, annotations when present, ``embedding`` as a list of float32);
- ``predictions.parquet``: the stored probe predictions (``procedure_uid``, ``key``,
  ``task``, ``label``, ``probability``, ``probe_version``);
- ``entities.parquet`` and ``entities.json``: the polyp entities (which tracklets are one
  polyp, and how they were grouped).

Tracklets are named by ``(procedure_uid, key)``, never by a store's ids: another store
gives them its own. No patient data is in a bundle beyond what the store holds (the
procedure uid, e.g. a hashed DICOM study uid), and no thumbnails.

:func:`import_bundle` adds a bundle to a store without re-embedding: the bundle's files
are checked against the manifest, the encoder version must equal the one the caller
serves (else :class:`EncoderMismatchError`), every embedding must be finite, of the
manifest's size and L2-normalised; each procedure is written in one transaction (its
tracklets, predictions and entities), then the index generation catches up with the
store. A bundle written by another program (embeddings computed elsewhere) needs only
``manifest.json``, ``procedures.parquet`` and ``tracklets.parquet``; its procedures are
imported ungrouped (``polypindex index group`` groups them).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from polypindex.indexer.grouping import procedure_polyps
from polypindex.indexer.store import Store
from polypindex.model.core.errors import ConfigError, NotFoundError
from polypindex.model.core.files import atomic_path

FORMAT = "polypindex-export/1"
MANIFEST = "manifest.json"
REQUIRED_FILES = ("procedures.parquet", "tracklets.parquet")
OPTIONAL_FILES = ("predictions.parquet", "entities.parquet", "entities.json")
NORM_TOLERANCE = 1e-3


def pyarrow_modules() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is a base dependency
        raise ConfigError("export and import need pyarrow: pip install pyarrow") from exc
    return pa, pq


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _release() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("polypindex")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


@dataclass
class ExportReport:
    """What :func:`export_bundle` wrote."""

    out: str
    encoder_version: str
    embedding_dim: int
    procedures: int
    tracklets: int
    predictions: int
    entities: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def export_bundle(
    store: Store,
    encoder_version: str,
    out: str | Path,
    *,
    on_procedure: Callable[[str], None] | None = None,
) -> ExportReport:
    """Write the store's rows of ``encoder_version`` as a bundle in the folder ``out``
    (created; files replaced atomically, the manifest last).

    Raises:
        NotFoundError: the store holds no tracklet of ``encoder_version``.
    """
    pa, pq = pyarrow_modules()
    procedures = store.list_procedures(encoder_version)
    if not procedures:
        known = ", ".join(store.encoder_versions()) or "none"
        raise NotFoundError(
            f"the store holds nothing of encoder {encoder_version!r} (stored versions: {known})"
        )
    proc_rows: list[dict[str, Any]] = []
    trk: dict[str, list[Any]] = {k: [] for k in COLUMNS["tracklets.parquet"]}
    preds: dict[str, list[Any]] = {k: [] for k in COLUMNS["predictions.parquet"]}
    ents: dict[str, list[Any]] = {k: [] for k in COLUMNS["entities.parquet"]}
    grouped: list[dict[str, Any]] = []
    dim = 0
    for proc in procedures:
        ids = store.tracklet_ids_for_procedure(proc.uid)
        records = store.get_tracklets(ids)
        predictions = store.predictions_for(ids)
        key_of = {tid: rec.key for tid, rec in records.items()}
        proc_rows.append(
            {
                "uid": proc.uid,
                "dataset_id": proc.dataset_id,
                "source": proc.source,
                "created_at": proc.created_at.astimezone(UTC).isoformat(),
            }
        )
        for tid in sorted(records):
            rec = records[tid]
            dim = int(rec.embedding.shape[0])
            for name, value in (
                ("procedure_uid", proc.uid),
                ("key", rec.key),
                ("start_frame", rec.start_frame),
                ("end_frame", rec.end_frame),
                ("n_frames", rec.n_frames),
                ("boxes_json", json.dumps(rec.boxes, sort_keys=True)),
                ("identity_label", rec.identity_label),
                ("size_mm", rec.size_mm),
                ("histology", rec.histology),
                ("embedding", np.asarray(rec.embedding, dtype=np.float32).tolist()),
            ):
                trk[name].append(value)
            for task, p in sorted(predictions.get(tid, {}).items()):
                for name, value in (
                    ("procedure_uid", proc.uid),
                    ("key", rec.key),
                    ("task", task),
                    ("label", p.label),
                    ("probability", float(p.probability)),
                    ("probe_version", p.probe_version),
                ):
                    preds[name].append(value)
        polyps = procedure_polyps(store, proc.uid, encoder_version)
        if polyps.grouped:
            grouped.append(
                {
                    "uid": proc.uid,
                    "method": polyps.method,
                    "cut": polyps.cut,
                    "calibrated": polyps.calibrated,
                    "entities": [
                        {
                            "entity_id": e.entity_id,
                            "tracklet_keys": [key_of[t] for t in e.tracklet_ids],
                            "start_frame": e.start_frame,
                            "end_frame": e.end_frame,
                        }
                        for e in polyps.entities
                    ],
                }
            )
            for e in polyps.entities:
                for t in e.tracklet_ids:
                    for name, value in (
                        ("procedure_uid", proc.uid),
                        ("key", key_of[t]),
                        ("entity", e.entity_id),
                        ("method", polyps.method),
                        ("cut", polyps.cut),
                        ("calibrated", polyps.calibrated),
                    ):
                        ents[name].append(value)
        if on_procedure is not None:
            on_procedure(proc.uid)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    tables = {
        "procedures.parquet": pa.Table.from_pylist(
            proc_rows, schema=arrow_schema(pa, "procedures.parquet")
        ),
        "tracklets.parquet": pa.Table.from_pydict(
            trk, schema=arrow_schema(pa, "tracklets.parquet", dim)
        ),
        "predictions.parquet": pa.Table.from_pydict(
            preds, schema=arrow_schema(pa, "predictions.parquet")
        ),
        "entities.parquet": pa.Table.from_pydict(ents, schema=arrow_schema(pa, "entities.parquet")),
    }
    for name, table in tables.items():
        with atomic_path(folder / name) as tmp:
            pq.write_table(table, tmp)
    entities_doc = {"encoder_version": encoder_version, "procedures": grouped}
    with atomic_path(folder / "entities.json") as tmp:
        Path(tmp).write_text(json.dumps(entities_doc, indent=1))
    files = [*tables, "entities.json"]
    manifest = {
        "format": FORMAT,
        "encoder_version": encoder_version,
        "embedding_dim": dim,
        "created_at": datetime.now(UTC).isoformat(),
        "polypindex_version": _release(),
        "counts": {
            "procedures": len(proc_rows),
            "tracklets": len(trk["key"]),
            "predictions": len(preds["key"]),
            "entity_memberships": len(ents["key"]),
        },
        "files": {name: file_sha256(folder / name) for name in files},
    }
    with atomic_path(folder / MANIFEST) as tmp:
        Path(tmp).write_text(json.dumps(manifest, indent=1))
    return ExportReport(
        str(folder),
        encoder_version,
        dim,
        len(proc_rows),
        len(trk["key"]),
        len(preds["key"]),
        sum(len(g["entities"]) for g in grouped),
    )


def zip_bundle(folder: str | Path) -> bytes:
    """The bundle in ``folder`` as one zip archive (the HTTP download)."""
    buffer = io.BytesIO()
    root = Path(folder)
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in (MANIFEST, *REQUIRED_FILES, *OPTIONAL_FILES):
            if (root / name).is_file():
                archive.write(root / name, arcname=name)
    return buffer.getvalue()


# Each file's columns and their Arrow types (``vector``: float32 × the embedding size).
COLUMNS: dict[str, dict[str, str]] = {
    "procedures.parquet": {
        "uid": "string",
        "dataset_id": "string",
        "source": "string",
        "created_at": "string",
    },
    "tracklets.parquet": {
        "procedure_uid": "string",
        "key": "string",
        "start_frame": "int64",
        "end_frame": "int64",
        "n_frames": "int64",
        "boxes_json": "string",
        "identity_label": "string",
        "size_mm": "float64",
        "histology": "string",
        "embedding": "vector",
    },
    "predictions.parquet": {
        "procedure_uid": "string",
        "key": "string",
        "task": "string",
        "label": "string",
        "probability": "float64",
        "probe_version": "string",
    },
    "entities.parquet": {
        "procedure_uid": "string",
        "key": "string",
        "entity": "int64",
        "method": "string",
        "cut": "float64",
        "calibrated": "bool_",
    },
}


def arrow_schema(pa: Any, name: str, dim: int = 0) -> Any:
    """The Arrow schema of the bundle file ``name`` (:data:`COLUMNS`)."""
    vector = pa.list_(pa.float32(), dim) if dim else pa.list_(pa.float32())
    return pa.schema(
        [
            (column, vector if kind == "vector" else getattr(pa, kind)())
            for column, kind in COLUMNS[name].items()
        ]
    )
