"""``polypindex export-index`` and ``polypindex import-index``: an index generation out to
Parquet and into another store without re-embedding (:mod:`polypindex.indexer.exchange`,
docs/inputs.md#export-and-import)."""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated

import typer

from polypindex.cli.options import DatabaseOpt, HomeOpt, IndexDirOpt, ModelOpt, layout
from polypindex.model.core.errors import InvalidInputError

VersionOpt = Annotated[
    str | None,
    typer.Option(
        "--encoder-version",
        help="The encoder version to export (default: the version of --model).",
    ),
]


def _model_version(model_path: Path) -> str | None:
    """The encoder version in a model file's metadata (``None`` when there is no file)."""
    if not model_path.is_file():
        return None
    from polypindex.model.core.versions import canonical_version
    from polypindex.model.runtime.base import META_PREFIX
    from polypindex.model.runtime.onnx import read_onnx_metadata

    return canonical_version(read_onnx_metadata(model_path)[f"{META_PREFIX}encoder_version"])


def export_index(
    out: Annotated[Path, typer.Argument(help="Folder to write the bundle into (created).")],
    encoder_version: VersionOpt = None,
    model: ModelOpt = None,
    database_url: DatabaseOpt = None,
    home: HomeOpt = None,
) -> None:
    """Write embeddings, tracklets, predictions and polyp entities of one encoder version as
    Parquet (plus entities.json and a manifest with checksums)."""
    from rich.progress import track

    from polypindex.indexer.exchange import export_bundle
    from polypindex.indexer.store import Store

    lay = layout(home=home, model=model, database_url=database_url)
    version = encoder_version or _model_version(lay.model_path)
    if version is None:
        raise typer.BadParameter(
            f"no model at {lay.model_path}: give --encoder-version (or --model)",
            param_hint="--encoder-version",
        )
    with Store(lay.database_url) as store:
        total = len(store.list_procedures(version))
        progress = iter(track(range(total), description="exporting", transient=True))

        def step(_uid: str) -> None:
            next(progress, None)

        report = export_bundle(store, version, out, on_procedure=step)
    typer.echo(json.dumps(report.to_dict(), indent=2))


def _unpacked(bundle: Path, scratch: Path) -> Path:
    """A bundle folder: ``bundle`` itself, or a zip (the HTTP download) unpacked."""
    if bundle.is_dir():
        return bundle
    if not zipfile.is_zipfile(bundle):
        raise InvalidInputError(f"{bundle.name}: not a bundle folder or a zip archive")
    from polypindex.indexer.exchange import MANIFEST, OPTIONAL_FILES, REQUIRED_FILES

    allowed = {MANIFEST, *REQUIRED_FILES, *OPTIONAL_FILES}
    with zipfile.ZipFile(bundle) as archive:
        for name in archive.namelist():
            if name not in allowed:
                raise InvalidInputError(f"{bundle.name}: unexpected member {name!r}")
            (scratch / name).write_bytes(archive.read(name))
    return scratch


def import_index(
    bundle: Annotated[
        Path, typer.Argument(help="A bundle folder (export-index) or its zip (GET /export).")
    ],
    force: Annotated[
        bool, typer.Option("--force", help="Replace procedures already stored.")
    ] = False,
    model: ModelOpt = None,
    database_url: DatabaseOpt = None,
    index_dir: IndexDirOpt = None,
    home: HomeOpt = None,
) -> None:
    """Add a bundle to the store and its index without re-embedding. Its encoder version must
    be the one --model serves (a store with no model file takes the bundle's)."""
    from polypindex.indexer.exchange_import import import_bundle
    from polypindex.indexer.store import Store

    lay = layout(home=home, model=model, database_url=database_url, index_dir=index_dir)
    expected = _model_version(lay.model_path)
    with tempfile.TemporaryDirectory() as scratch, Store(lay.database_url) as store:
        folder = _unpacked(bundle, Path(scratch))
        report = import_bundle(
            store,
            folder,
            lay.index_dir,
            expected_version=expected,
            force=force,
            on_procedure=lambda uid: typer.echo(f"imported {uid}", err=True),
        )
    typer.echo(json.dumps(report.to_dict(), indent=2))


def register(app: typer.Typer) -> None:
    app.command("export-index")(export_index)
    app.command("import-index")(import_index)
