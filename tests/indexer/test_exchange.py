"""Export then import into an empty store gives identical search results; a bundle that
does not match its manifest, the serving encoder or the format is refused naming the
problem, and nothing is written (indexer/exchange.py, docs/inputs.md#export-and-import)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers.viewer import ViewerWorld, build_world

from polypindex.indexer.exchange import export_bundle
from polypindex.indexer.exchange_import import import_bundle, read_manifest
from polypindex.indexer.generations import open_or_rebuild
from polypindex.indexer.grouping import procedure_polyps
from polypindex.indexer.store import Store
from polypindex.model.core.errors import EncoderMismatchError, InvalidInputError, NotFoundError


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> ViewerWorld:
    return build_world(tmp_path_factory.mktemp("exchange") / "home")


@pytest.fixture(scope="module")
def bundle(world: ViewerWorld, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "export"
    with Store(world.settings.database_url) as store:
        report = export_bundle(store, world.encoder.version, out)
    assert report.procedures == 4 and report.tracklets == len(world.ids)
    assert report.predictions == 2 * len(world.ids)  # size + histology for every tracklet
    return out


def _answers(database_url: str, index_dir: Path, version: str, queries: np.ndarray) -> list:
    """Each query's hits as (procedure uid, key, score): names that do not depend on ids."""
    with Store(database_url) as store:
        index = open_or_rebuild(index_dir, store, version, queries.shape[1])
        hits = index.search(queries, 5)
        records = store.get_tracklets([i for row in hits for i, _ in row])
        return [
            [(records[i].procedure_uid, records[i].key, round(s, 6)) for i, s in row]
            for row in hits
        ]


def test_export_then_import_gives_identical_search_results(
    world: ViewerWorld, bundle: Path, tmp_path: Path
) -> None:
    version = world.encoder.version
    with Store(world.settings.database_url) as store:
        _, vectors = store.embeddings_for_ids(sorted(world.ids.values()))
        polyps_before = {
            p.uid: procedure_polyps(store, p.uid, version) for p in store.list_procedures()
        }
    target = tmp_path / "other-site"
    url = f"sqlite:///{target / 'store.db'}"
    target.mkdir()
    with Store(url) as store:
        report = import_bundle(store, bundle, target / "index", expected_version=version)
        assert sorted(report.procedures_imported) == sorted(polyps_before)
        assert report.tracklets == len(world.ids) and report.index_size == len(world.ids)
        for uid, before in polyps_before.items():
            after = procedure_polyps(store, uid, version)
            assert after.grouped == before.grouped and after.method == before.method
            assert len(after.entities) == len(before.entities)
        again = import_bundle(store, bundle, target / "index", expected_version=version)
        assert again.procedures_imported == [] and len(again.procedures_skipped) == 4
    original = _answers(world.settings.database_url, world.settings.index_dir, version, vectors)
    imported = _answers(url, target / "index", version, vectors)
    assert imported == original and all(len(hits) == 5 for hits in imported)


def test_the_manifest_lists_every_file_with_its_checksum(bundle: Path) -> None:
    manifest = read_manifest(bundle)
    assert manifest["format"] == "polypindex-export/1"
    assert set(manifest["files"]) == {
        "procedures.parquet",
        "tracklets.parquet",
        "predictions.parquet",
        "entities.parquet",
        "entities.json",
    }
    entities = json.loads((bundle / "entities.json").read_text())
    assert {p["uid"] for p in entities["procedures"]} <= {
        "ds:001",
        "ds:002",
        "frames-proc",
        "video-proc",
    }
    assert all(e["tracklet_keys"] for p in entities["procedures"] for e in p["entities"])


def _copy(bundle: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(bundle, out)
    return out


def test_a_version_mismatch_is_refused_and_nothing_is_written(bundle: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with Store(url) as store:
        with pytest.raises(EncoderMismatchError, match="fake-v1"):
            import_bundle(store, bundle, tmp_path / "index", expected_version="hmve-other")
        assert store.count_tracklets() == 0


def test_a_tampered_file_is_refused(bundle: Path, tmp_path: Path) -> None:
    copy = _copy(bundle, tmp_path)
    with (copy / "tracklets.parquet").open("ab") as f:
        f.write(b"x")
    with pytest.raises(InvalidInputError, match=r"tracklets\.parquet does not match its checksum"):
        read_manifest(copy)


def test_foreign_embeddings_must_be_normalised(
    world: ViewerWorld, bundle: Path, tmp_path: Path
) -> None:
    """A bundle written elsewhere (required files only) with one bad embedding: refused
    naming the row, and nothing of the bundle is written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from polypindex.indexer.exchange import file_sha256

    copy = _copy(bundle, tmp_path)
    table = pq.read_table(copy / "tracklets.parquet").to_pylist()
    table[-1]["embedding"] = [2.0 * v for v in table[-1]["embedding"]]
    schema = pq.read_schema(copy / "tracklets.parquet")
    pq.write_table(pa.Table.from_pylist(table, schema=schema), copy / "tracklets.parquet")
    manifest = json.loads((copy / "manifest.json").read_text())
    for name in ("predictions.parquet", "entities.parquet", "entities.json"):
        (copy / name).unlink()
        del manifest["files"][name]
    manifest["files"]["tracklets.parquet"] = file_sha256(copy / "tracklets.parquet")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with Store(url) as store:
        with pytest.raises(InvalidInputError, match=r"row \d+ .*L2-normalised"):
            import_bundle(store, copy, tmp_path / "index", expected_version=world.encoder.version)
        assert store.count_tracklets() == 0


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(format="other/9"), "format must be"),
        (lambda m: m["files"].pop("tracklets.parquet"), "must list tracklets.parquet"),
        (lambda m: m["files"].update({"../x": "0"}), "unknown file"),
    ],
)
def test_a_bad_manifest_is_refused(bundle: Path, tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    copy = _copy(bundle, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InvalidInputError, match=message):
        read_manifest(copy)


def test_nothing_to_export_names_the_stored_versions(world: ViewerWorld, tmp_path: Path) -> None:
    with (
        Store(world.settings.database_url) as store,
        pytest.raises(NotFoundError, match="fake-v1"),
    ):
        export_bundle(store, "hmve-none", tmp_path / "out")


def test_the_cli_exports_and_imports_a_zip(world: ViewerWorld, tmp_path: Path) -> None:
    """``export-index`` then ``import-index`` of the zip the HTTP download gives."""
    from typer.testing import CliRunner

    from polypindex.cli.app import app
    from polypindex.indexer.exchange import zip_bundle

    runner = CliRunner()
    out = tmp_path / "bundle"
    args = ["--database-url", world.settings.database_url, "--home", str(world.settings.home)]
    result = runner.invoke(app, ["export-index", str(out), "--encoder-version", "fake-v1", *args])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tracklets"] == len(world.ids)
    archive = tmp_path / "bundle.zip"
    archive.write_bytes(zip_bundle(out))
    home = tmp_path / "site-b"
    result = runner.invoke(app, ["import-index", str(archive), "--home", str(home)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["index_size"] == len(world.ids)
    result = runner.invoke(app, ["import-index", str(out / "manifest.json"), "--home", str(home)])
    assert result.exit_code == 1 and "not a bundle folder or a zip archive" in result.output


def test_the_http_download_is_the_same_bundle(world: ViewerWorld, tmp_path: Path) -> None:
    """``GET /export`` (read scope) answers the zip that ``import-index`` takes."""
    import io
    import zipfile

    from helpers.service_api import assert_error, started

    with started(world.settings, world.encoder) as client:
        r = client.get("/export")
        assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
        message = assert_error(
            client.get("/export", params={"encoder_version": "hmve-none"}), 404, "not_found"
        )
        assert "fake-v1" in message
    archive = zipfile.ZipFile(io.BytesIO(r.content))
    assert "manifest.json" in archive.namelist()
    folder = tmp_path / "downloaded"
    archive.extractall(folder)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with Store(url) as store:
        report = import_bundle(store, folder, tmp_path / "index", expected_version="fake-v1")
    assert report.tracklets == len(world.ids)
