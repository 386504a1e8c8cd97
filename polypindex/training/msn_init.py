"""MSN → HMVE: initialise the HMVE frame encoder from a frame-level MSN checkpoint
(docs/method.md#frame-pretraining)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from polypindex.model.core.errors import ConfigError
from polypindex.model.data.config import PreprocessConfig
from polypindex.model.nets.encoder import load_frame_encoder_checkpoint
from polypindex.model.nets.hmve import HMVE

logger = logging.getLogger(__name__)


def load_msn_into_hmve(
    encoder: HMVE, path: str | Path, preprocess: PreprocessConfig | None = None
) -> dict[str, Any]:
    """Copy an MSN checkpoint's backbone weights into ``encoder.frame_encoder``.

    Args:
        encoder: the HMVE to initialise (its other parts are untouched).
        path: a checkpoint written by ``polypindex pretrain-frames`` (``msn.pt``).
        preprocess: the HMVE run's crop settings; a warning is issued when they differ
            from those the frames were pretrained with.

    Returns:
        ``{"path", "version", "backbone", "epoch"}`` for the training record.

    Raises:
        ConfigError: the checkpoint's backbone is not the HMVE's (both are named).
        ModelLoadError: the file is missing or not a frame-encoder checkpoint.
    """
    loaded = load_frame_encoder_checkpoint(path)
    want = (encoder.config.backbone, encoder.config.tiny_width)
    have = (loaded.backbone_name, loaded.tiny_width)
    if want[0] != have[0] or (want[0] == "tiny" and want[1] != have[1]):
        raise ConfigError(
            f"init_frame_encoder {path}: the MSN checkpoint's backbone is {_describe(*have)} but "
            f"the HMVE's encoder.backbone is {_describe(*want)}; pretrain that backbone or set "
            f"encoder.backbone: {have[0]}"
        )
    encoder.frame_encoder.load_state_dict(loaded.backbone.state_dict())
    if preprocess is not None and preprocess != loaded.preprocess:
        warnings.warn(
            f"init_frame_encoder {path}: pretrained with preprocess {loaded.preprocess.to_dict()}, "
            f"training with {preprocess.to_dict()}",
            stacklevel=2,
        )
    logger.info("frame encoder initialised from %s (%s)", path, loaded.version)
    return {
        "path": str(path),
        "version": loaded.version,
        "backbone": loaded.backbone_name,
        "epoch": loaded.extra.get("epoch"),
    }


def _describe(backbone: str, tiny_width: int) -> str:
    return f"{backbone!r} (tiny_width={tiny_width})" if backbone == "tiny" else repr(backbone)
