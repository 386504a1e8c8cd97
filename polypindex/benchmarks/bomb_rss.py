"""Server memory while decompression bombs are refused.

Starts the service with uvicorn in a subprocess (a cheap stand-in encoder, an empty
store under a temporary home), sends a one-colour 20000×20000 PNG (about 1.2 MB,
1.2 GB once decoded) as a ``/reid`` frame, then three at once, and samples the
server's resident memory (psutil) every 10 ms meanwhile. With ``--compare`` a second
server without a usable pixel limit (``max_image_pixels`` = 10**12) gets one bomb in
the same run, to show what the limit saves.

    python benchmarks/bomb_rss.py --out benchmarks/results/bomb_rss.json [--compare]
"""

from __future__ import annotations

import argparse
import base64
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from polypindex.benchmarks.env import environment, write_result
from polypindex.benchmarks.serving import free_port, wait_until_healthy
from polypindex.benchmarks.stand_in import StandInEncoder

BOUND_MB = 64.0  # growth over the idle server that still counts as "refused before decoding"


class FrameStandIn(StandInEncoder):
    """The stand-in encoder, also embedding query frames (resized whole frames)."""

    def embed_tracklet(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        import cv2

        seq = np.stack([cv2.resize(img, (32, 32)) for img in images]).astype(np.float32) / 255.0
        return self.embed_sequences([seq.transpose(0, 3, 1, 2)])[0]


def make_app() -> Any:
    """The uvicorn factory: the service from ``POLYPINDEX_*`` with the stand-in encoder."""
    from polypindex.service.app import create_app

    app = create_app()
    app.state.encoder = FrameStandIn()
    return app


def bomb_png(side: int) -> bytes:
    """A valid one-colour RGB PNG of ``side`` × ``side`` pixels, compressed row by row."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    row = b"\x00" + b"\x00" * (3 * side)
    z = zlib.compressobj(9)
    parts = [z.compress(row) for _ in range(side)]
    parts.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", b"".join(parts))
        + chunk(b"IEND", b"")
    )


def small_png() -> bytes:
    import cv2

    ok, data = cv2.imencode(".png", np.full((24, 24, 3), 120, np.uint8))
    assert ok
    return bytes(data.tobytes())


class Sampler:
    """Samples a process's RSS every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        import psutil  # a dev dependency, only this benchmark needs it

        self.process, self.interval = psutil.Process(pid), interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return max(self.samples) / 2**20


def reid_body(image: bytes) -> dict[str, Any]:
    frame = {"image_b64": base64.b64encode(image).decode(), "bbox": [0, 0, 8, 8]}
    small = {"image_b64": base64.b64encode(small_png()).decode(), "bbox": [0, 0, 8, 8]}
    return {"a": {"frames": [frame]}, "b": {"frames": [small]}}


def measure(bomb: bytes, max_pixels: int, concurrent: int, home: Path) -> dict[str, Any]:
    """Start a server with this pixel limit, send one bomb then ``concurrent`` at once."""
    port = free_port()
    env = {
        **os.environ,
        "POLYPINDEX_HOME": str(home),
        "POLYPINDEX_MAX_IMAGE_PIXELS": str(max_pixels),
        "POLYPINDEX_INDEX_REFRESH_SECONDS": "3600",
    }
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "polypindex.benchmarks.bomb_rss:make_app"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    server = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=300) as client:
            wait_until_healthy(client, server, 120)
            warm = client.post("/reid", json=reid_body(small_png()))
            assert warm.status_code == 200, warm.text
            import psutil

            process = psutil.Process(server.pid)
            time.sleep(0.5)
            idle_mb = process.memory_info().rss / 2**20
            body = reid_body(bomb)
            with Sampler(server.pid) as one:
                r = client.post("/reid", json=body)
            single = {"status": r.status_code, "code": r.json().get("error", {}).get("code")}
            with Sampler(server.pid) as many, ThreadPoolExecutor(concurrent) as pool:
                replies = list(
                    pool.map(
                        lambda _: httpx.post(f"{url}/reid", json=body, timeout=300),
                        range(concurrent),
                    )
                )
            after_mb = process.memory_info().rss / 2**20
        return {
            "max_image_pixels": max_pixels,
            "idle_rss_mb": round(idle_mb, 1),
            "one_bomb": {**single, "peak_rss_mb": round(one.peak_mb, 1)},
            f"{concurrent}_at_once": {
                "statuses": sorted(x.status_code for x in replies),
                "peak_rss_mb": round(many.peak_mb, 1),
            },
            "after_rss_mb": round(after_mb, 1),
            "growth_mb": round(max(one.peak_mb, many.peak_mb) - idle_mb, 1),
        }
    finally:
        server.terminate()
        server.wait(30)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--side", type=int, default=20_000, help="bomb width = height")
    parser.add_argument("--concurrent", type=int, default=3)
    parser.add_argument("--compare", action="store_true", help="also a server without the limit")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bomb_rss.json"))
    args = parser.parse_args(argv)
    bomb = bomb_png(args.side)
    result: dict[str, Any] = {
        "benchmark": "bomb_rss",
        "bomb": {"width": args.side, "height": args.side, "png_bytes": len(bomb)},
        "bound_mb": BOUND_MB,
    }
    with tempfile.TemporaryDirectory() as tmp:
        limited = measure(bomb, 25_000_000, args.concurrent, Path(tmp) / "limited")
        result["limited"] = limited
        result["within_bound"] = limited["growth_mb"] <= BOUND_MB
        if args.compare:  # one bomb through a server that decodes it (the old behaviour)
            result["unlimited"] = measure(bomb, 10**12, 1, Path(tmp) / "unlimited")
    result["environment"] = environment(note="shared 2-core machine; other jobs were running")
    write_result(args.out, result)
    return 0 if result["within_bound"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
