"""polypindex.indexer.dicom: H.264 video and JPEG multi-frame DICOM files the test writes, the same
frames as a frames folder, no patient identifier anywhere, and each refusal."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers.indexing import TRACKLETS, FakeEncoder, frame_pixels, write_csv, write_frames

from polypindex.indexer.dicom import (
    JPEG_BASELINE,
    VIDEO_ENDOSCOPIC,
    VL_ENDOSCOPIC,
    dicom_source,
    dicom_sources,
    read_dicom_info,
    stream_dicom,
)
from polypindex.indexer.pipeline import index_sources
from polypindex.indexer.sources import frames_source
from polypindex.indexer.store import Store
from polypindex.model.core.errors import InvalidInputError

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

N = 12
PATIENT = "Doe^Jane"
PATIENT_ID = "PAT-123456"
STUDY = "1.2.826.0.1.3680043.8.498.1"
H264 = "1.2.840.10008.1.2.4.102"


def _dataset(
    sop_class: str, syntax: str, frames: list[bytes] | bytes, n_frames: int | None = None
) -> Dataset:
    """A dataset with a patient; ``frames``: one item per frame, or the pixel data itself."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT, PATIENT_ID, "19700101"
    ds.Modality = "ES"
    ds.Rows, ds.Columns = 48, 64
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 3, 8, 8, 7
    ds.PixelRepresentation, ds.PlanarConfiguration = 0, 0
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.NumberOfFrames = n_frames if n_frames is not None else len(frames)
    ds.FrameTime = 40.0  # 25 frames/s
    ds.PixelData = frames if isinstance(frames, bytes) else encapsulate(frames)
    ds["PixelData"].VR = "OB"
    return ds


def _jpegs(n: int = N) -> list[bytes]:
    out = []
    for i in range(n):
        ok, buf = cv2.imencode(".jpg", frame_pixels(i)[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok
        out.append(buf.tobytes())
    return out


def _h264(n: int = N) -> bytes:
    import av

    buffer = io.BytesIO()
    container = av.open(buffer, "w", format="h264")
    stream = container.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    stream.options = {"crf": "10", "preset": "ultrafast"}
    for i in range(n):
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame_pixels(i), format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return buffer.getvalue()


def write_jpeg_dicom(path: Path, n_frames: int | None = None, frames: int = N) -> Path:
    _dataset(VL_ENDOSCOPIC, JPEG_BASELINE, _jpegs(frames), n_frames).save_as(
        path, enforce_file_format=True
    )
    return path


def write_h264_dicom(path: Path, n_frames: int | None = None, frames: int = N) -> Path:
    from pydicom.encaps import itemize_fragment

    video = _h264(frames)
    if len(video) % 2:
        video += b"\x00"
    # one stream split into two fragments after an empty basic offset table
    half = len(video) // 2 // 2 * 2
    pixel_data = b"".join(
        [
            itemize_fragment(b""),
            itemize_fragment(video[:half]),
            itemize_fragment(video[half:]),
            b"\xfe\xff\xdd\xe0\x00\x00\x00\x00",  # sequence delimiter
        ]
    )
    ds = _dataset(VIDEO_ENDOSCOPIC, H264, pixel_data, n_frames if n_frames is not None else N)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_jpeg_dicom_decodes_pixel_identical_to_the_frames_folder(tmp_path: Path) -> None:
    dcm = write_jpeg_dicom(tmp_path / "proc.dcm")
    info = read_dicom_info(dcm)
    assert (info.encoding, info.n_frames, info.width, info.height) == ("jpeg", N, 64, 48)
    assert info.frame_rate == pytest.approx(25.0) and info.sop_class == VL_ENDOSCOPIC
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, data in enumerate(_jpegs()):
        (folder / f"{i:06d}.jpg").write_bytes(data)
    csv = write_csv(tmp_path / "d.csv", N)
    from_dicom = dicom_source(dcm, csv, config=TRACKLETS)
    from_folder = frames_source(folder, csv, uid="f", config=TRACKLETS)
    wanted = list(range(N))
    for (fa, a), (fb, b) in zip(from_dicom.frames(wanted), from_folder.frames(wanted), strict=True):
        assert fa == fb and np.array_equal(a, b)
    assert [t.frame_ids.tolist() for t in from_dicom.tracklets] == [
        t.frame_ids.tolist() for t in from_folder.tracklets
    ]


def test_h264_dicom_decodes_like_the_frames_within_codec_tolerance(tmp_path: Path) -> None:
    dcm = write_h264_dicom(tmp_path / "video.dcm")
    info = read_dicom_info(dcm)
    assert info.encoding == "h264" and info.n_frames == N and info.sop_class == VIDEO_ENDOSCOPIC
    got = list(stream_dicom(info, [0, 5, 11]))
    assert [f for f, _ in got] == [0, 5, 11]
    for f, img in got:
        assert img.shape == (48, 64, 3)
        assert np.abs(img.astype(int) - frame_pixels(f)).mean() < 4


def test_index_dicom_and_no_patient_identifier_is_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dcm = write_h264_dicom(tmp_path / "video.dcm")
    folder = write_frames(tmp_path / "frames", N)
    csv = write_csv(tmp_path / "d.csv", N)
    source = dicom_source(dcm, csv, config=TRACKLETS)
    assert source.uid.startswith("dicom-") and STUDY not in source.uid and len(source.uid) == 22
    store = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    sources = [source, frames_source(folder, csv, uid="f", config=TRACKLETS)]
    report = index_sources(sources, store, tmp_path / "idx", FakeEncoder(), progress=False)
    assert report.procedures_indexed == 2 and report.tracklets == 4
    (d0, d1), (f0, f1) = (
        [store.get_tracklet(i).embedding for i in store.tracklet_ids_for_procedure(u)]
        for u in (source.uid, "f")
    )
    assert float(d0 @ f0) > 0.99 and float(d1 @ f1) > 0.99
    blob = b"".join(
        p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".dcm"
    )
    text = repr(source) + repr(read_dicom_info(dcm)) + caplog.text
    for secret in (PATIENT, PATIENT_ID, "19700101", STUDY):
        assert secret.encode() not in blob and secret not in text


def test_a_folder_of_two_files_of_one_study(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    write_jpeg_dicom(tmp_path / "in" / "a.dcm")
    write_h264_dicom(tmp_path / "in" / "b.dcm")
    (tmp_path / "dets").mkdir()
    write_csv(tmp_path / "dets" / "a.csv", N)
    write_csv(tmp_path / "dets" / "b.csv", N)
    sources = dicom_sources(tmp_path / "in", tmp_path / "dets", config=TRACKLETS)
    uids = [s.uid for s in sources]
    assert len(set(uids)) == 2 and all(u.startswith(uids[0][:22] + "-") for u in uids)
    with pytest.raises(InvalidInputError, match="a UID names one procedure"):
        dicom_sources(tmp_path / "in", tmp_path / "dets", "x", config=TRACKLETS)


def test_refusals_name_the_problem(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "d.csv", N)
    (tmp_path / "not.dcm").write_bytes(b"hello, not a dicom file" * 10)
    with pytest.raises(InvalidInputError, match="is not a DICOM file"):
        read_dicom_info(tmp_path / "not.dcm")
    single = _dataset(VL_ENDOSCOPIC, JPEG_BASELINE, _jpegs(1), 1)
    single.save_as(tmp_path / "single.dcm", enforce_file_format=True)
    with pytest.raises(InvalidInputError, match="a single-frame image"):
        read_dicom_info(tmp_path / "single.dcm")
    raw = _dataset(VL_ENDOSCOPIC, ExplicitVRLittleEndian, _jpegs(2), 2)
    raw.save_as(tmp_path / "raw.dcm", enforce_file_format=True)
    with pytest.raises(
        InvalidInputError, match=r"transfer syntax 1\.2\.840\.10008\.1\.2\.1 is not supported"
    ):
        read_dicom_info(tmp_path / "raw.dcm")
    short = write_jpeg_dicom(tmp_path / "short.dcm", n_frames=N, frames=N - 3)
    with pytest.raises(
        InvalidInputError, match=r"9 frame.* NumberOfFrames says 12 .missing frames"
    ):
        list(dicom_source(short, csv, config=TRACKLETS).frames([0]))
    short_video = write_h264_dicom(tmp_path / "short_video.dcm", n_frames=N, frames=6)
    with pytest.raises(InvalidInputError, match="ends after frame 5, but detections need frame 9"):
        list(dicom_source(short_video, csv, config=TRACKLETS).frames([2, 9]))
    few = write_jpeg_dicom(tmp_path / "few.dcm", n_frames=4, frames=4)
    with pytest.raises(
        InvalidInputError, match=r"d\.csv, line \d+: frame 4 is beyond the 4 frames"
    ):
        dicom_source(few, csv, config=TRACKLETS)
    for path in tmp_path.glob("*.dcm"):
        try:
            read_dicom_info(path)
        except InvalidInputError as exc:
            assert PATIENT not in str(exc) and PATIENT_ID not in str(exc)


def test_index_dicom_over_the_cli_then_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``polypindex index dicom FILE --detections CSV`` (MOTChallenge detections), then the
    procedure is searchable; a folder indexes one procedure per file."""
    import json

    from typer.testing import CliRunner

    import polypindex.cli.store as cli_store
    from polypindex.cli import app
    from polypindex.indexer.generations import open_or_rebuild

    monkeypatch.delenv("POLYPINDEX_DATABASE_URL", raising=False)
    monkeypatch.setattr(cli_store, "_load_encoder", lambda layout: FakeEncoder())
    dcm = write_h264_dicom(tmp_path / "video.dcm")
    mot = tmp_path / "dets.txt"  # MOTChallenge: 1-based frames, -1 ids (linked by ByteTrack)
    mot.write_text(
        "".join(f"{f + 1},-1,4,8,12,12,0.9,-1,-1,-1\n" for f in range(N))
        + "".join(f"{f + 1},-1,30,20,14,14,0.9,-1,-1,-1\n" for f in range(N))
    )
    home = tmp_path / "home"
    args = ["--home", str(home), "--min-tracklet-length", "3"]
    result = CliRunner().invoke(app, ["index", "dicom", str(dcm), "--detections", str(mot), *args])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["procedures_indexed"] == 1 and report["tracklets"] == 2
    (uid,) = report["indexed_uids"]
    assert uid.startswith("dicom-") and STUDY not in result.output
    with Store(f"sqlite:///{home / 'index' / 'polypindex.db'}") as store:
        ids = store.tracklet_ids_for_procedure(uid)
        index = open_or_rebuild(home / "index", store, "fake-v1", FakeEncoder().dim)
        hits = index.search(store.get_tracklet(ids[0]).embedding, 2)[0]
        assert hits[0][0] == ids[0] and hits[0][1] > 0.99
        assert store.get_procedure(uid).source.startswith("dicom:")
    folder = tmp_path / "studies"
    folder.mkdir()
    write_jpeg_dicom(folder / "a.dcm")
    dets = tmp_path / "dets"
    dets.mkdir()
    write_csv(dets / "a.csv", N)
    result = CliRunner().invoke(
        app, ["index", "dicom", str(folder), "--detections", str(dets), "--linker", "greedy", *args]
    )
    assert result.exit_code == 0, result.output
    # one file of the same study as video.dcm: the same procedure uid, so it is skipped ...
    assert json.loads(result.stdout)["procedures_skipped"] == 1
    result = CliRunner().invoke(
        app,
        [
            "index",
            "dicom",
            str(folder / "a.dcm"),
            "--detections",
            str(dets / "a.csv"),
            "--uid",
            "second-file",
            *args,
        ],
    )
    assert result.exit_code == 0, result.output  # ... unless it is given its own
    assert json.loads(result.stdout)["indexed_uids"] == ["second-file"]


def test_a_dicom_job_over_http_is_confined_and_searchable(tmp_path: Path) -> None:
    from helpers.service_api import started
    from helpers.service_jobs import ServiceFakeEncoder, wait_for

    from polypindex.service.settings import Settings

    settings = Settings(home=tmp_path / "home", index_refresh_seconds=0)
    data = settings.home / "data"
    data.mkdir(parents=True)
    dcm = write_h264_dicom(data / "s1.dcm")  # a DICOM video ...
    csv = data / "s1.txt"  # ... with MOTChallenge detections (1-based frames, -1 ids)
    csv.write_text(
        "".join(f"{f + 1},-1,4,8,12,12,0.9,-1,-1,-1\n" for f in range(N))
        + "".join(f"{f + 1},-1,30,20,14,14,0.9,-1,-1,-1\n" for f in range(N))
    )
    outside = write_jpeg_dicom(tmp_path / "outside.dcm")
    with started(settings, ServiceFakeEncoder()) as client:
        body = {"kind": "dicom", "file": str(dcm), "detections": str(csv), "min_tracklet_length": 3}
        r = client.post("/procedures", json=body)
        assert r.status_code == 202, r.text
        job = wait_for(client, r.json()["job_id"])
        assert job["status"] == "succeeded", job
        procedures = client.get("/procedures").json()["procedures"]
        (proc,) = [p for p in procedures if p["uid"].startswith("dicom-")]
        timeline = client.get(f"/procedures/{proc['uid']}").json()
        tracklet = timeline["tracklets"][0]["tracklet_id"]
        hits = client.post("/search", json={"query": {"tracklet_id": tracklet}, "k": 1})
        assert hits.status_code == 200 and len(hits.json()["results"]) == 1
        r = client.post("/procedures", json={**body, "file": str(outside)})
        assert r.status_code == 403 and r.json()["error"]["code"] == "path_not_allowed"
        assert str(tmp_path) not in r.text
        r = client.post("/procedures", json={**body, "linker": "hungarian"})
        assert r.status_code == 422
