"""The worst-case memory of one hostile request (issue 24, docs/deploy.md#limits): each
input the issue measured, sent to a fresh service in a process of its own
(:mod:`helpers.memory_probe`), grows its peak resident memory by under 300 MB.

Before the fix, on the same machine and the same probe: a keyless 63 MiB body of empty
lists +1644 MB, a 12.6 M-number embedding +579 MB, 32 frames of a 5000² PNG +2369 MB, a
strip of a 20000² PNG +2289 MB, TIFF +2290 MB, GIF +2671 MB, of a 16383² WebP +1794 MB.
After: +0, +0, +158, +0, +0, +0 and +0 MB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BOUND_MB = 300.0
ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {  # case -> (status or refusal, error code)
    "keyless_body": (401, "unauthorized"),
    "huge_embedding": (413, "payload_too_large"),
    "query_frames": (200, None),  # decoded one at a time, each cropped at once
    "strip_png": ("ImageTooLargeError", None),
    "strip_tiff": ("ImageTooLargeError", None),
    "strip_gif": ("ImageTooLargeError", None),
    "strip_webp": ("ImageTooLargeError", None),
}


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/self/status")
@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_one_hostile_request_stays_under_the_bound(case: str, tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-m", "tests.helpers.memory_probe", case, str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["status"], result["code"]) == EXPECTED[case], result
    assert result["growth_mb"] < BOUND_MB, result
