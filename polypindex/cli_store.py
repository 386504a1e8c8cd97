"""``polypindex db`` / ``index`` / ``delete``: the store and indexer commands.

Each command parses its options and calls one library function of
:mod:`indexer`. ``polypindex index DATA`` (no sub-command) still means
``polypindex index coco DATA``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from polypindex.model.errors import PolypIndexError
from polypindex.paths import layout

HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="Artefact folder (default: $POLYPINDEX_HOME or ./var)."),
]
DatabaseOpt = Annotated[
    str | None,
    typer.Option(
        help="SQLAlchemy URL (default: $POLYPINDEX_DATABASE_URL, else SQLite under --home)."
    ),
]
IndexDirOpt = Annotated[
    Path | None, typer.Option(help="Index root folder (default: under --home).")
]
ModelOpt = Annotated[Path | None, typer.Option(help="Encoder .onnx (default: the demo model).")]
ForceOpt = Annotated[bool, typer.Option(help="Re-embed procedures that are already indexed.")]
MinLengthOpt = Annotated[
    int, typer.Option(help="Tracklets with fewer frames are dropped (SPEC §3).")
]
GapOpt = Annotated[int, typer.Option(help="A larger frame gap starts a new tracklet.")]
IouOpt = Annotated[float, typer.Option(help="A lower IoU with the previous box starts a new one.")]
ThresholdOpt = Annotated[
    int | None,
    typer.Option(help="Vectors from which the index is HNSW instead of exact (default 100000)."),
]
ProbesOpt = Annotated[
    Path | None,
    typer.Option(
        help="Folder of the size/histology probes (size.npz, histology.npz) whose predictions "
        "are stored with each tracklet (default: probes/ next to the model; none there: none)."
    ),
]
IvfThresholdOpt = Annotated[
    int | None,
    typer.Option(
        help="Vectors from which the index is IVF instead of HNSW (default: never; IVF builds "
        "faster but needs a large nprobe for recall, see docs/store.md)."
    ),
]


class _CocoByDefault(TyperGroup):
    """A group whose first argument, when it is not a sub-command, goes to ``coco``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["coco", *args]
        return super().parse_args(ctx, args)


db_app = typer.Typer(help="Database schema migrations (Alembic).", no_args_is_help=True)
index_app = typer.Typer(
    cls=_CocoByDefault,
    help="Index procedures (COCO folder, video + CSV, frames + CSV); rebuild or list index generations.",
    no_args_is_help=True,
)


def _fail(exc: BaseException) -> typer.Exit:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


def _echo(data: Any) -> None:
    typer.echo(json.dumps(data, default=str, indent=2))


def _load_encoder(model: Path | None, home: Path | None) -> Any:
    from polypindex.model.runtime import OnnxEncoder

    return OnnxEncoder(model or layout(home).demo_model_dir / "encoder.onnx")


def _installed_probes(
    model: Path | None, probes: Path | None, home: Path | None, encoder_version: str
) -> Any:
    from polypindex.indexer.pipeline import installed_probes

    model_path = model or layout(home).demo_model_dir / "encoder.onnx"
    return installed_probes(probes or model_path.parent / "probes", encoder_version)


def _open_store(database_url: str | None, home: Path | None, migrate: bool = True) -> Any:
    from polypindex.indexer.store import Store

    return Store(database_url or layout(home).database_url, migrate=migrate)


def _policy(threshold: int | None, ivf_threshold: int | None = None) -> Any:
    from polypindex.indexer.vector_index import IndexPolicy

    if not threshold and not ivf_threshold:
        return None
    settings: dict[str, Any] = {"ivf_threshold": ivf_threshold} if ivf_threshold else {}
    if threshold:
        settings["approximate_threshold"] = threshold
    return IndexPolicy(**settings)


def _tracklet_config(min_length: int, gap: int, iou: float) -> Any:
    from polypindex.model.config import TrackletConfig

    return TrackletConfig(separation_thresh=gap, iou_thresh=iou, min_tracklet_length=min_length)


# -- db ---------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
    database_url: DatabaseOpt = None,
    home: HomeOpt = None,
) -> None:
    """Migrate the database schema to the newest revision (or --revision)."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from polypindex.indexer.migrate import upgrade

    url = database_url or layout(home).database_url
    try:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(
                parents=True, exist_ok=True
            )
        engine = create_engine(url, poolclass=NullPool)
        try:
            before, after = upgrade(engine, revision)
        finally:
            engine.dispose()
    except PolypIndexError as exc:
        raise _fail(exc) from exc
    typer.echo(f"database schema: {before or '(empty)'} -> {after}")


@db_app.command("current")
def db_current(database_url: DatabaseOpt = None, home: HomeOpt = None) -> None:
    """Show the database's schema revision and the one this code needs."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from polypindex.indexer.migrate import schema_state

    engine = create_engine(database_url or layout(home).database_url, poolclass=NullPool)
    try:
        current, head = schema_state(engine)
    finally:
        engine.dispose()
    _echo({"current": current, "head": head, "up_to_date": current == head})


# -- index ------------------------------------------------------------------------------


def _report(report: Any) -> None:
    _echo(report.to_dict())


@index_app.command("coco")
def index_coco(
    data: Annotated[Path, typer.Argument(help="COCO dataset folder (images/ + annotations/).")],
    split: Annotated[
        list[str] | None, typer.Option(help="Split(s) to index (repeatable; default: test).")
    ] = None,
    model: ModelOpt = None,
    database_url: DatabaseOpt = None,
    index_dir: IndexDirOpt = None,
    force: ForceOpt = False,
    approximate_threshold: ThresholdOpt = None,
    ivf_threshold: IvfThresholdOpt = None,
    probes: ProbesOpt = None,
    home: HomeOpt = None,
) -> None:
    """Index the procedures of a COCO dataset: tracklets -> embeddings -> SQL rows + FAISS."""
    from polypindex.indexer.pipeline import index_dataset

    try:
        encoder = _load_encoder(model, home)
        store = _open_store(database_url, home)
        for s in split or ["test"]:
            _report(
                index_dataset(
                    data,
                    s,
                    store,
                    index_dir or layout(home).index_dir,
                    encoder,
                    force=force,
                    policy=_policy(approximate_threshold, ivf_threshold),
                    probes=_installed_probes(model, probes, home, encoder.version),
                )
            )
    except PolypIndexError as exc:
        raise _fail(exc) from exc


@index_app.command("video")
def index_video(
    video: Annotated[Path, typer.Argument(help="Video file (mp4, mkv, avi ...).")],
    detections: Annotated[
        Path, typer.Option(help="MOT-style CSV: frame,x,y,w,h,score[,track_id].")
    ],
    uid: Annotated[str | None, typer.Option(help="Procedure UID (default: the file stem).")] = None,
    first_frame: Annotated[
        int, typer.Option(help="Number of the video's first frame in the CSV (MOT: 1).")
    ] = 0,
    min_score: Annotated[float, typer.Option(help="Ignore boxes scoring below this.")] = 0.0,
    min_tracklet_length: MinLengthOpt = 30,
    separation_thresh: GapOpt = 1,
    iou_thresh: IouOpt = 0.1,
    model: ModelOpt = None,
    database_url: DatabaseOpt = None,
    index_dir: IndexDirOpt = None,
    force: ForceOpt = False,
    approximate_threshold: ThresholdOpt = None,
    ivf_threshold: IvfThresholdOpt = None,
    probes: ProbesOpt = None,
    home: HomeOpt = None,
) -> None:
    """Index one procedure from a video file and its detections (streamed, never fully loaded)."""
    from polypindex.indexer.pipeline import index_sources
    from polypindex.indexer.sources import video_source

    try:
        source = video_source(
            video,
            detections,
            uid,
            first_frame=first_frame,
            min_score=min_score,
            config=_tracklet_config(min_tracklet_length, separation_thresh, iou_thresh),
        )
        encoder = _load_encoder(model, home)
        _report(
            index_sources(
                [source],
                _open_store(database_url, home),
                index_dir or layout(home).index_dir,
                encoder,
                force=force,
                policy=_policy(approximate_threshold, ivf_threshold),
                probes=_installed_probes(model, probes, home, encoder.version),
            )
        )
    except PolypIndexError as exc:
        raise _fail(exc) from exc


@index_app.command("frames")
def index_frames(
    folder: Annotated[Path, typer.Argument(help="Folder of frame images (number in each name).")],
    detections: Annotated[
        Path, typer.Option(help="MOT-style CSV: frame,x,y,w,h,score[,track_id].")
    ],
    uid: Annotated[
        str | None, typer.Option(help="Procedure UID (default: the folder name).")
    ] = None,
    min_score: Annotated[float, typer.Option(help="Ignore boxes scoring below this.")] = 0.0,
    min_tracklet_length: MinLengthOpt = 30,
    separation_thresh: GapOpt = 1,
    iou_thresh: IouOpt = 0.1,
    model: ModelOpt = None,
    database_url: DatabaseOpt = None,
    index_dir: IndexDirOpt = None,
    force: ForceOpt = False,
    approximate_threshold: ThresholdOpt = None,
    ivf_threshold: IvfThresholdOpt = None,
    probes: ProbesOpt = None,
    home: HomeOpt = None,
) -> None:
    """Index one procedure from a folder of frames and its detections."""
    from polypindex.indexer.pipeline import index_sources
    from polypindex.indexer.sources import frames_source

    try:
        source = frames_source(
            folder,
            detections,
            uid,
            min_score=min_score,
            config=_tracklet_config(min_tracklet_length, separation_thresh, iou_thresh),
        )
        encoder = _load_encoder(model, home)
        _report(
            index_sources(
                [source],
                _open_store(database_url, home),
                index_dir or layout(home).index_dir,
                encoder,
                force=force,
                policy=_policy(approximate_threshold, ivf_threshold),
                probes=_installed_probes(model, probes, home, encoder.version),
            )
        )
    except PolypIndexError as exc:
        raise _fail(exc) from exc


@index_app.command("predict")
def index_predict(
    model: ModelOpt = None,
    probes: ProbesOpt = None,
    database_url: DatabaseOpt = None,
    home: HomeOpt = None,
) -> None:
    """(Re)compute the stored size/histology predictions of every indexed tracklet of the
    model's encoder with the installed probes (e.g. after training a new probe)."""
    from polypindex.indexer.pipeline import predict_stored

    try:
        encoder = _load_encoder(model, home)
        installed = _installed_probes(model, probes, home, encoder.version)
        if not installed:
            folder = probes or (model or layout(home).demo_model_dir / "encoder.onnx").parent
            raise PolypIndexError(
                f"no probe installed in {folder if probes else folder / 'probes'}; train one "
                f"with `polypindex probe train size|histology`"
            )
        _echo(predict_stored(_open_store(database_url, home), encoder.version, installed))
    except PolypIndexError as exc:
        raise _fail(exc) from exc


@index_app.command("retire")
def index_retire(
    encoder_version: Annotated[str, typer.Argument(help="The encoder version to retire.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    database_url: DatabaseOpt = None,
    index_dir: IndexDirOpt = None,
    home: HomeOpt = None,
) -> None:
    """Retire an index generation: delete the rows of one encoder version and its index
    folder (other generations are untouched)."""
    from polypindex.indexer.pipeline import retire_generation

    if not yes:
        typer.confirm(
            f"Delete every tracklet embedded by {encoder_version} and its index?", abort=True
        )
    try:
        removed = retire_generation(
            encoder_version, _open_store(database_url, home), index_dir or layout(home).index_dir
        )
    except PolypIndexError as exc:
        raise _fail(exc) from exc
    _echo({"encoder_version": encoder_version, "tracklets_removed": removed})


@index_app.command("rebuild")
def index_rebuild(
    encoder_version: Annotated[
        list[str] | None,
        typer.Option(help="Generation(s) to rebuild (repeatable; default: every one stored)."),
    ] = None,
    database_url: DatabaseOpt = None,
    index_dir: IndexDirOpt = None,
    approximate_threshold: ThresholdOpt = None,
    ivf_threshold: IvfThresholdOpt = None,
    home: HomeOpt = None,
) -> None:
    """Rebuild index generations from scratch from the database (atomic save)."""
    from polypindex.indexer.vector_index import rebuild_generation

    try:
        store = _open_store(database_url, home)
        versions = encoder_version or store.encoder_versions()
        root = index_dir or layout(home).index_dir
        out = []
        for version in versions:
            index = rebuild_generation(
                root, store, version, policy=_policy(approximate_threshold, ivf_threshold)
            )
            out.append(
                {
                    "encoder_version": version,
                    "vectors": len(index),
                    "kind": index.kind,
                    "directory": str(index.directory),
                }
            )
    except PolypIndexError as exc:
        raise _fail(exc) from exc
    _echo(out)


@index_app.command("generations")
def index_generations(
    database_url: DatabaseOpt = None, index_dir: IndexDirOpt = None, home: HomeOpt = None
) -> None:
    """List the index generations (one per encoder version) and whether each is in sync."""
    from polypindex.indexer.vector_index import describe_generations

    try:
        store = _open_store(database_url, home)
        _echo(describe_generations(index_dir or layout(home).index_dir, store))
    except PolypIndexError as exc:
        raise _fail(exc) from exc


# -- delete -----------------------------------------------------------------------------


def delete(
    procedure_uid: Annotated[str, typer.Argument(help="UID of the procedure to remove.")],
    database_url: DatabaseOpt = None,
    index_dir: IndexDirOpt = None,
    home: HomeOpt = None,
) -> None:
    """Remove a procedure's rows and its vectors from every index generation."""
    from polypindex.indexer.pipeline import delete_procedure

    try:
        removed = delete_procedure(
            procedure_uid,
            _open_store(database_url, home),
            index_dir or layout(home).index_dir,
        )
    except PolypIndexError as exc:
        raise _fail(exc) from exc
    typer.echo(f"deleted procedure {procedure_uid}: {len(removed)} tracklets removed")
