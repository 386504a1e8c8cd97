"""Test support shared by the test folders (never shipped: it lives under ``tests/``).

Importable as ``helpers`` because pytest puts ``tests/`` on ``sys.path``
(``pythonpath = ["tests"]`` in ``pyproject.toml``); a Python child process started
by a test gets the same through :func:`subprocess_env`.

- :mod:`helpers.indexing`: a deterministic fake encoder, tiny videos, frame
  folders, detections CSVs, a tiny COCO dataset and a hand-made probe;
- :mod:`helpers.coco`: writing a COCO annotation file;
- :mod:`helpers.onnx_graphs`: a tiny hand-built ONNX encoder with our metadata;
- :mod:`helpers.rows`: tracklet rows with random unit embeddings;
- :mod:`helpers.synth`: small synthetic-dataset configurations;
- :mod:`helpers.tiny_models`: the tiny encoder configuration (imports torch);
- :mod:`helpers.service_api`: the service API tests' fake encoder, requests and checks.
"""

from __future__ import annotations

import os
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    """This process's environment with ``tests/`` on ``PYTHONPATH`` (so a child can
    ``import helpers``), plus ``extra``."""
    paths = [str(TESTS_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **extra}
