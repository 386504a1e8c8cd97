"""COCO-with-video-fields loading and validation (docs/method.md#data-format), and tracklets
from it.

A dataset folder is ``ROOT/images/*.jpg`` + ``ROOT/annotations/instances_{split}.json``.
Every problem raises :class:`InvalidAnnotationError` naming the file and record.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from polypindex.model.core.errors import InvalidAnnotationError
from polypindex.model.data.config import TrackletConfig
from polypindex.model.data.tracklets import Tracklet, split_runs

IMAGE_FIELDS = ("id", "file_name", "width", "height", "frame_id", "sequence_id")
ANNOTATION_FIELDS = ("id", "image_id", "bbox", "identity_id")
METADATA_FIELDS = ("size", "histology", "morphology", "location")
# Boxes may touch the border; allow half a pixel of rounding outside it.
_BORDER_TOLERANCE = 0.5


def annotation_path(root: str | Path, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}.json"


@dataclass(frozen=True)
class CocoSplit:
    """One validated split of a dataset.

    Attributes:
        root: the dataset folder.
        split: ``train``, ``val`` or ``test``.
        coco: the pycocotools index over the validated annotations.
    """

    root: Path
    split: str
    coco: COCO

    @property
    def sequences(self) -> list[str]:
        return sorted({str(img["sequence_id"]) for img in self.coco.imgs.values()})

    def image_path(self, image: dict[str, Any]) -> Path:
        return self.root / "images" / str(image["file_name"])

    def tracklets(self, config: TrackletConfig | None = None) -> list[Tracklet]:
        """Per identity, instances sorted by frame and cut into tracklets
        (docs/method.md#tracklets).

        Returns:
            Tracklets ordered by (sequence, identity, start frame), with ``metadata``
            holding the identity's ``size`` / ``histology`` / ... when annotated.
        """
        config = config or TrackletConfig()
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for ann in self.coco.anns.values():
            img = self.coco.imgs[ann["image_id"]]
            groups.setdefault((str(img["sequence_id"]), str(ann["identity_id"])), []).append(ann)
        out: list[Tracklet] = []
        for (seq, ident), anns in sorted(groups.items()):
            anns.sort(key=lambda a: (int(self.coco.imgs[a["image_id"]]["frame_id"]), a["id"]))
            frames = np.array(
                [int(self.coco.imgs[a["image_id"]]["frame_id"]) for a in anns], dtype=np.int64
            )
            boxes = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
            meta = {k: anns[0][k] for k in METADATA_FIELDS if anns[0].get(k) is not None}
            for index, run in enumerate(split_runs(frames, boxes, config)):
                out.append(
                    Tracklet(
                        sequence_id=seq,
                        identity_id=ident,
                        index=index,
                        frame_ids=frames[run],
                        boxes=boxes[run],
                        image_paths=tuple(
                            str(self.image_path(self.coco.imgs[anns[i]["image_id"]])) for i in run
                        ),
                        metadata=dict(meta),
                    )
                )
        return out


def _fail(path: Path, message: str) -> InvalidAnnotationError:
    return InvalidAnnotationError(f"{path}: {message}")


def validate_coco_dict(data: Any, path: Path, check_images_exist: bool = True) -> None:
    """Check the data-format contract (docs/method.md#data-format); raise
    InvalidAnnotationError naming the bad record."""
    if not isinstance(data, dict):
        raise _fail(path, "top level must be a JSON object with 'images' and 'annotations'")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise _fail(path, f"missing or non-list '{key}'")
    images: dict[int, dict[str, Any]] = {}
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict):
            raise _fail(path, f"images[{i}] is not an object")
        missing = [f for f in IMAGE_FIELDS if f not in img]
        if missing:
            raise _fail(path, f"images[{i}] (id={img.get('id')!r}) is missing field(s) {missing}")
        if img["id"] in images:
            raise _fail(path, f"duplicate image id {img['id']!r} (images[{i}])")
        if (
            not (isinstance(img["width"], int) and isinstance(img["height"], int))
            or min(img["width"], img["height"]) <= 0
        ):
            raise _fail(
                path,
                f"image id={img['id']!r} has invalid width/height {img['width']!r}x{img['height']!r}",
            )
        if not isinstance(img["frame_id"], int) or isinstance(img["frame_id"], bool):
            raise _fail(
                path, f"image id={img['id']!r} has non-integer frame_id {img['frame_id']!r}"
            )
        if check_images_exist:
            file = path.parent.parent / "images" / str(img["file_name"])
            if not file.is_file():
                raise _fail(path, f"image id={img['id']!r}: file {file} does not exist")
        images[img["id"]] = img
    seen_ann: set[Any] = set()
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise _fail(path, f"annotations[{i}] is not an object")
        missing = [f for f in ANNOTATION_FIELDS if f not in ann]
        if missing:
            raise _fail(
                path, f"annotations[{i}] (id={ann.get('id')!r}) is missing field(s) {missing}"
            )
        if ann["id"] in seen_ann:
            raise _fail(path, f"duplicate annotation id {ann['id']!r} (annotations[{i}])")
        seen_ann.add(ann["id"])
        img = images.get(ann["image_id"])
        if img is None:
            raise _fail(
                path, f"annotation id={ann['id']!r} refers to missing image_id {ann['image_id']!r}"
            )
        bbox = ann["bbox"]
        if not (
            isinstance(bbox, list | tuple)
            and len(bbox) == 4
            and all(isinstance(v, int | float) for v in bbox)
        ):
            raise _fail(
                path,
                f"annotation id={ann['id']!r} has malformed bbox {bbox!r} (expected [x, y, w, h])",
            )
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            raise _fail(
                path, f"annotation id={ann['id']!r} has bbox {bbox!r} with non-positive size"
            )
        t = _BORDER_TOLERANCE
        if x < -t or y < -t or x + w > img["width"] + t or y + h > img["height"] + t:
            raise _fail(
                path,
                f"annotation id={ann['id']!r} has bbox {bbox!r} outside its image "
                f"id={img['id']!r} ({img['width']}x{img['height']})",
            )


def load_coco_split(root: str | Path, split: str, check_images_exist: bool = True) -> CocoSplit:
    """Load and validate ``ROOT/annotations/instances_{split}.json``.

    Raises:
        InvalidAnnotationError: missing file, invalid JSON, or a bad record (named).
    """
    path = annotation_path(root, split)
    if not path.is_file():
        raise InvalidAnnotationError(
            f"annotation file not found: {path} (expected ROOT/annotations/instances_{split}.json)"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidAnnotationError(f"{path}: not valid JSON: {exc}") from exc
    validate_coco_dict(data, path, check_images_exist=check_images_exist)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return CocoSplit(root=Path(root), split=split, coco=coco)
