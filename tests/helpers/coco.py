"""Writing a COCO annotation file the way our datasets lay it out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_coco_json(
    root: Path, split: str, images: list[dict[str, Any]], annotations: list[dict[str, Any]]
) -> Path:
    """``root/annotations/instances_<split>.json`` with these images and annotations and the
    one ``polyp`` category; returns its path."""
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "polyp"}],
    }
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps(coco))
    return path
