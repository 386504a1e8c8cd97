"""ONNX Runtime inference for the exported encoder: the serving path (numpy only, no torch).

:class:`OnnxEncoder` reads its preprocessing, fragment rule, embedding size,
version and re-identification threshold from the ONNX model's metadata (written
by :mod:`model.export`), never from local defaults, and returns L2-normalised
float32 embeddings.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from polypindex.model.config import FragmentConfig, PreprocessConfig
from polypindex.model.embedding import CropStream, tracklet_fragments
from polypindex.model.errors import ConfigError, InvalidInputError, ModelLoadError
from polypindex.model.preprocess import normalize

ONNX_FORMAT = "polypindex-onnx/1"
META_PREFIX = "polypindex."
REQUIRED_METADATA = (
    "format",
    "encoder_version",
    "preprocess",
    "fragment",
    "embedding_dim",
    "reid_threshold",
)
INPUT_NAME = "frames"
OUTPUT_NAME = "embedding"


def _session_options(intra_op_threads: int | None = None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only
    if intra_op_threads is not None:
        if intra_op_threads < 1:
            raise ConfigError(
                f"intra_op_threads must be >= 1 (or None for the default), got {intra_op_threads}"
            )
        opts.intra_op_num_threads = int(intra_op_threads)
    return opts


def _open_session(
    path: Path, providers: Sequence[str], options: ort.SessionOptions
) -> ort.InferenceSession:
    if not path.is_file():
        raise ModelLoadError(f"ONNX model not found: {path}")
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelLoadError(f"cannot load ONNX model {path}: {exc}") from exc


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it, then CPU."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available] or [
        "CPUExecutionProvider"
    ]


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The model's custom metadata (``metadata_props``) as a ``{key: value}`` string map.

    Raises:
        ModelLoadError: the file is missing or not a loadable ONNX model.
    """
    opts = _session_options()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = _open_session(Path(path), ["CPUExecutionProvider"], opts)
    return dict(session.get_modelmeta().custom_metadata_map)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows divided by their L2 norm (rows of zeros stay zero)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32, copy=False)


class OnnxEncoder:
    """The exported HMVE, run with ONNX Runtime.

    Args:
        path: an ``.onnx`` file written by :func:`model.export.export_onnx`.
        providers: execution providers in priority order; default CUDA (if
            available) then CPU.
        intra_op_threads: threads per operator; ``None`` = onnxruntime's default.

    Attributes:
        path: the model file.
        version: encoder version (embeddings of different versions never mix).
        preprocess: crop settings to apply before :meth:`embed`.
        fragment: which frames of a tracklet are embedded (``fragment_length=-1``).
        dim: embedding size ``D``.
        reid_threshold: same-polyp threshold on ``sigmoid(cosine)``.
        providers: the providers the session actually uses.
        metadata: the raw ``polypindex.*`` metadata.

    Raises:
        ModelLoadError: missing or unloadable file, or missing/invalid metadata
            (the message names the file and the key).
    """

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
    ) -> None:
        self.path = Path(path)
        self._session = _open_session(
            self.path,
            list(providers) if providers else default_providers(),
            _session_options(intra_op_threads),
        )
        meta = dict(self._session.get_modelmeta().custom_metadata_map)
        self.metadata = {k: v for k, v in meta.items() if k.startswith(META_PREFIX)}
        for key in REQUIRED_METADATA:
            if META_PREFIX + key not in meta:
                raise ModelLoadError(
                    f"ONNX model {self.path} lacks metadata key {META_PREFIX + key!r}; "
                    f"export it with model.export.export_onnx"
                )
        if meta[META_PREFIX + "format"] != ONNX_FORMAT:
            raise ModelLoadError(
                f"ONNX model {self.path} has format {meta[META_PREFIX + 'format']!r}, expected {ONNX_FORMAT!r}"
            )
        try:
            self.version: str = meta[META_PREFIX + "encoder_version"]
            self.preprocess = PreprocessConfig.from_dict(
                json.loads(meta[META_PREFIX + "preprocess"])
            )
            self.fragment = FragmentConfig.from_dict(json.loads(meta[META_PREFIX + "fragment"]))
            self.dim = int(meta[META_PREFIX + "embedding_dim"])
            self.reid_threshold = float(meta[META_PREFIX + "reid_threshold"])
            self.encoder_config: dict[str, Any] = json.loads(
                meta.get(META_PREFIX + "encoder_config", "{}")
            )
        except (ValueError, TypeError, ConfigError) as exc:
            raise ModelLoadError(
                f"ONNX model {self.path} has invalid polypindex metadata: {exc}"
            ) from exc
        if not math.isfinite(self.reid_threshold):
            raise ModelLoadError(f"ONNX model {self.path}: reid_threshold is {self.reid_threshold}")
        names = [i.name for i in self._session.get_inputs()]
        if names != [INPUT_NAME]:
            raise ModelLoadError(
                f"ONNX model {self.path} has inputs {names}, expected [{INPUT_NAME!r}]"
            )
        self.providers: list[str] = list(self._session.get_providers())

    @property
    def expected_shape(self) -> str:
        s = self.preprocess.im_size
        return f"float32 [b, s, 3, {s}, {s}]"

    def __repr__(self) -> str:
        return f"OnnxEncoder({str(self.path)!r}, version={self.version!r}, dim={self.dim}, providers={self.providers})"

    def embed(self, frames: np.ndarray) -> np.ndarray:
        """Embed batches of normalised crops.

        Args:
            frames: float32 ``[b, s, 3, H, W]`` with ``H = W = preprocess.im_size``:
                the output of :func:`model.preprocess.normalize` (do not normalise again).

        Returns:
            float32 ``(b, D)``, L2-normalised rows.

        Raises:
            InvalidInputError: wrong type, dtype, rank, sizes or non-finite values.
        """
        if not isinstance(frames, np.ndarray):
            raise InvalidInputError(
                f"frames must be a numpy array {self.expected_shape}, got {type(frames).__name__}"
            )
        if not np.issubdtype(frames.dtype, np.floating):
            raise InvalidInputError(
                f"frames must be float32 {self.expected_shape} (normalised crops from model.preprocess), "
                f"got dtype {frames.dtype}"
            )
        s = self.preprocess.im_size
        if (
            frames.ndim != 5
            or frames.shape[2:] != (3, s, s)
            or frames.shape[0] < 1
            or frames.shape[1] < 1
        ):
            raise InvalidInputError(
                f"frames must have shape {self.expected_shape}, got {frames.shape}"
            )
        x = np.ascontiguousarray(frames, dtype=np.float32)
        if not np.isfinite(x).all():
            raise InvalidInputError("frames contain NaN or infinite values")
        (out,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: x})
        return l2_normalize(np.asarray(out, dtype=np.float32))

    def embed_sequences(self, seqs: Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
        """Embed sequences of different lengths, batching those of equal length.

        No padding is used, so each row equals embedding that sequence alone.

        Args:
            seqs: N float32 arrays ``[s_i, 3, H, W]`` (normalised crops).
            batch_size: sequences per ONNX Runtime call.

        Returns:
            float32 ``(N, D)``, L2-normalised, in input order.
        """
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
        out = np.zeros((len(seqs), self.dim), dtype=np.float32)
        by_length: dict[int, list[int]] = {}
        for i, seq in enumerate(seqs):
            if not isinstance(seq, np.ndarray) or seq.ndim != 4:
                got = seq.shape if isinstance(seq, np.ndarray) else type(seq).__name__
                s = self.preprocess.im_size
                raise InvalidInputError(f"sequence {i} must have shape [s, 3, {s}, {s}], got {got}")
            by_length.setdefault(seq.shape[0], []).append(i)
        for indices in by_length.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                out[chunk] = self.embed(np.stack([seqs[i] for i in chunk]))
        return out

    def tracklet_frames(self, n_frames: int) -> list[np.ndarray]:
        """Indices of the frames embedded for a tracklet of ``n_frames`` (the indexing rule,
        :func:`model.embedding.tracklet_fragments`)."""
        return tracklet_fragments(n_frames, self.fragment)

    def embed_tracklet(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        """Embed one tracklet from raw frames, exactly as the indexer does.

        Frames are chosen with this model's fragment rule (:meth:`tracklet_frames`),
        cropped by :class:`model.embedding.CropStream` with this model's preprocessing
        and normalised with :func:`model.preprocess.normalize`. If the rule yields
        several fragments, their embeddings are averaged and re-normalised.

        Args:
            images: the tracklet's frames, RGB uint8 ``(H, W, 3)`` each.
            boxes: ``(s, 4)`` ``[x, y, w, h]`` boxes, one per frame.

        Returns:
            float32 ``(D,)``, L2-normalised.
        """
        boxes = np.asarray(boxes, dtype=np.float64)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise InvalidInputError(f"boxes must have shape (s, 4) [x, y, w, h], got {boxes.shape}")
        if len(images) != len(boxes):
            raise InvalidInputError(f"{len(images)} frames but {len(boxes)} boxes")
        fragments = self.tracklet_frames(len(images))
        if not fragments:
            raise InvalidInputError(
                f"a tracklet of {len(images)} frame(s) gives no fragment under {self.fragment}"
            )
        stream = CropStream(
            [(np.arange(len(images)), boxes)],
            [fragments],
            lambda ids: ((i, images[i]) for i in ids),
            self.preprocess,
        )
        ((_, sequences),) = [done for per_frame in stream for done in per_frame]
        emb = self.embed(np.stack([normalize(seq, self.preprocess) for seq in sequences]))
        return emb[0] if len(emb) == 1 else l2_normalize(emb.mean(axis=0))
