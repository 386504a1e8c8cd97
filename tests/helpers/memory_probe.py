"""One hostile input against a fresh service, in a process of its own: its peak memory.

    python -m tests.helpers.memory_probe CASE WORKDIR    # prints one JSON line

The service runs in this process (``TestClient``, a stand-in encoder that crops like
the ONNX encoders, ``auth="keys"`` with one read key, a SQLite store of one tracklet under
``WORKDIR``). After a warm-up request and once the input is built, the peak resident
memory is reset (``/proc/self/clear_refs``); the line printed gives the answer's status
and code and ``growth_mb``: the peak (``VmHWM``) over the resident memory just before
the input was sent. Cases: :data:`CASES`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tests.helpers import bombs

CASES = (
    "keyless_body",  # 63 MiB of empty lists, no key: POST /search
    "huge_embedding",  # 12.6 M numbers (48 MiB) as a query embedding, with a key
    "query_frames",  # 32 frames of a 5000² PNG (84 kB each) as a query
    "strip_png",  # a strip whose source frame is a 20000² PNG
    "strip_tiff",  # ... a 389 kB TIFF declaring 20000²
    "strip_gif",  # ... a 35-byte GIF declaring 20000²
    "strip_webp",  # ... a 32-byte WebP declaring 16383²
)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _measure(send: Callable[[], Any]) -> tuple[Any, float]:
    with contextlib.suppress(OSError):  # where allowed, the peak starts again from here
        Path("/proc/self/clear_refs").write_text("5")
    base = _status_kb("VmRSS")
    result = send()
    return result, (_status_kb("VmHWM") - base) / 1024.0


class CroppingEncoder:
    """A stand-in encoder: the mean colour of each frame's crop (as the ONNX encoders
    crop, with their preprocessing on ``preprocess``)."""

    version = "memory-probe"
    dim = 3
    reid_threshold = 0.5

    def __init__(self) -> None:
        from polypindex.model.data.config import PreprocessConfig

        self.preprocess = PreprocessConfig()

    def embed_tracklet(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        from polypindex.model.data.preprocess import crop_frame

        crops = [
            crop_frame(img, box, self.preprocess) for img, box in zip(images, boxes, strict=True)
        ]
        mean = np.mean([c.reshape(-1, 3).mean(axis=0) for c in crops], axis=0) + 1.0
        return (mean / np.linalg.norm(mean)).astype(np.float32)


def _service_case(case: str, workdir: Path) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from polypindex.indexer.generations import open_or_rebuild
    from polypindex.indexer.store import Store
    from polypindex.indexer.tables import TrackletRow
    from polypindex.service.app import create_app
    from polypindex.service.settings import Settings
    from tests.helpers.auth import add_key, bearer

    settings = Settings(home=workdir / "home", auth="keys")
    token = add_key(settings, "reader", "read")
    store = Store(settings.database_url)
    try:  # one stored tracklet of the encoder's version, so /search serves
        row = TrackletRow(
            key="p/0", start_frame=0, end_frame=1, n_frames=2, embedding=np.ones(3) / 3**0.5
        )
        store.replace_procedure("p", "test", "synthetic", CroppingEncoder.version, [row])
        open_or_rebuild(settings.index_dir, store, CroppingEncoder.version, 3, save=True)
    finally:
        store.close()
    app = create_app(settings)
    app.state.encoder = CroppingEncoder()
    with TestClient(app) as client:
        small = base64.b64encode(bombs.png(64)).decode()
        frame = {"image_b64": small, "bbox": [10, 10, 20, 20]}
        client.post("/search", json={"query": {"frames": [frame]}}, headers=bearer(token))
        client.post("/search", content=b"[[]]")  # warm-up: the paths the case takes
        headers = {"content-type": "application/json"}
        if case == "keyless_body":
            n = (63 << 20) // 3
            body = b"[" + b"[]," * (n - 1) + b"[]]"
        elif case == "huge_embedding":
            n = (48 << 20) // 4
            body = b'{"query": {"embedding": [' + b"0.1," * (n - 1) + b"0.1]}}"
            headers.update(bearer(token))
        else:
            big = base64.b64encode(bombs.png(5000)).decode()
            one = {"image_b64": big, "bbox": [2000, 2000, 400, 400]}
            body = json.dumps({"query": {"frames": [one] * 32}}).encode()
            headers.update(bearer(token))
        r, growth = _measure(lambda: client.post("/search", content=body, headers=headers))
        code = r.json().get("error", {}).get("code") if r.status_code >= 400 else None
        return {"case": case, "status": r.status_code, "code": code, "growth_mb": growth}


def _strip_case(case: str, workdir: Path) -> dict[str, Any]:
    from polypindex.indexer.strips import StripFrames, render_strip

    make = {"strip_png": bombs.png, "strip_tiff": bombs.tiff, "strip_gif": bombs.gif}
    ext = {"strip_png": ".png", "strip_tiff": ".tif", "strip_gif": ".gif"}
    small = workdir / "small.png"
    small.write_bytes(bombs.png(64))
    render_strip(StripFrames([small], np.array([[1.0, 1.0, 8.0, 8.0]]), True), 32)  # warm-up
    path = workdir / ("bomb" + ext.get(case, ".webp"))
    path.write_bytes(make.get(case, bombs.webp)())
    frames = StripFrames([path], np.array([[1.0, 1.0, 8.0, 8.0]]), True)

    def send() -> str:
        try:
            render_strip(frames, 32)
        except Exception as exc:  # the refusal is the expected outcome
            return type(exc).__name__
        return "decoded"

    outcome, growth = _measure(send)
    return {"case": case, "status": outcome, "code": None, "growth_mb": growth}


def probe(case: str, workdir: Path) -> dict[str, Any]:
    """The outcome and the memory growth of ``case`` (one of :data:`CASES`)."""
    if case not in CASES:
        raise ValueError(f"unknown case {case!r}; one of {', '.join(CASES)}")
    workdir.mkdir(parents=True, exist_ok=True)
    if case.startswith("strip_"):
        return _strip_case(case, workdir)
    return _service_case(case, workdir)


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1], Path(sys.argv[2]))))
