"""Reference embeddings: how a runtime proves it computes the model's identity.

The encoder version names the weights and the preprocessing, not the runtime that runs
them (docs/runtimes.md#one-identity-per-model): ONNX Runtime FP32, OpenVINO FP32 or
BF16 and TensorRT FP16 all serve the version written at export. A reduced-precision
runtime earns that only by reproducing the model's *reference embeddings*: at export
(and at INT8 quantisation) ONNX Runtime on the CPU in FP32 — the reference runtime —
embeds a few fixed inputs, and their embeddings are stored in the model's metadata
(``polypindex.reference_embeddings``). At load, :func:`model.runtime.loader.load_encoder`
embeds the same inputs with the chosen runtime and compares (:func:`parity_cosines`);
below the minimum cosine (``POLYPINDEX_PARITY_MIN_COSINE``, default 0.999) it falls
back to FP32 and says why in ``describe()`` and ``/healthz``.

The fixed inputs are not stored: they are drawn from ``numpy.random.default_rng(seed)``
(:func:`reference_inputs`), whose stream numpy keeps stable, and the SHA-256 of their
bytes is stored beside the embeddings. Should a numpy release ever change the stream,
or a model predate this metadata, the reference is computed again on the reference
runtime at load (``describe()["parity"]["reference"]`` says which).

Numpy only (the serving path).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from polypindex.model.core.errors import InvalidInputError
from polypindex.model.core.layout import DEFAULT_PARITY_MIN_COSINE

REFERENCE_KEY = "reference_embeddings"
DEFAULT_MIN_COSINE = DEFAULT_PARITY_MIN_COSINE
REFERENCE_SEED = 20
REFERENCE_SEQUENCES = 4
REFERENCE_LENGTH = 2


def reference_inputs(
    im_size: int,
    seed: int = REFERENCE_SEED,
    n: int = REFERENCE_SEQUENCES,
    length: int = REFERENCE_LENGTH,
) -> np.ndarray:
    """The fixed inputs: float32 ``[n, length, 3, im_size, im_size]``, standard normal
    (the scale of normalised crops), from ``default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, length, 3, im_size, im_size), dtype=np.float32)


def inputs_digest(inputs: np.ndarray) -> str:
    """SHA-256 of the inputs' little-endian float32 bytes."""
    return hashlib.sha256(np.ascontiguousarray(inputs, dtype="<f4").tobytes()).hexdigest()


@dataclass(frozen=True)
class Reference:
    """Reference embeddings of a model, as stored in its metadata.

    Attributes:
        seed / shape: how :func:`reference_inputs` draws the inputs (``shape`` is
            ``[n, length, 3, H, W]``).
        inputs_sha256: :func:`inputs_digest` of those inputs when they were embedded.
        embeddings: float32 ``(n, D)``, L2-normalised, from the reference runtime.
        runtime: what computed them (``"onnxruntime-cpu-fp32"``).
    """

    seed: int
    shape: tuple[int, ...]
    inputs_sha256: str
    embeddings: np.ndarray
    runtime: str = "onnxruntime-cpu-fp32"

    def inputs(self) -> np.ndarray:
        """The fixed inputs again (:func:`reference_inputs`)."""
        n, length, _, size, _ = self.shape
        return reference_inputs(size, self.seed, n, length)

    def inputs_match(self, inputs: np.ndarray) -> bool:
        """Whether ``inputs`` are the ones that were embedded (same bytes)."""
        return inputs_digest(inputs) == self.inputs_sha256

    def to_json(self) -> str:
        data = np.ascontiguousarray(self.embeddings, dtype="<f4")
        return json.dumps(
            {
                "seed": self.seed,
                "shape": list(self.shape),
                "inputs_sha256": self.inputs_sha256,
                "dim": int(data.shape[1]),
                "embeddings_f32_b64": base64.b64encode(data.tobytes()).decode("ascii"),
                "runtime": self.runtime,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Reference:
        """Parse :meth:`to_json`.

        Raises:
            InvalidInputError: malformed JSON or sizes that do not fit together.
        """
        try:
            raw = json.loads(text)
            shape = tuple(int(v) for v in raw["shape"])
            dim = int(raw["dim"])
            values = np.frombuffer(base64.b64decode(raw["embeddings_f32_b64"]), dtype="<f4")
            seed, digest = int(raw["seed"]), str(raw["inputs_sha256"])
            runtime = str(raw.get("runtime", "onnxruntime-cpu-fp32"))
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidInputError(f"malformed {REFERENCE_KEY}: {exc}") from exc
        if len(shape) != 5 or dim < 1 or values.size != shape[0] * dim:
            raise InvalidInputError(
                f"malformed {REFERENCE_KEY}: shape {list(shape)}, dim {dim}, {values.size} values"
            )
        return cls(seed, shape, digest, values.reshape(shape[0], dim).astype(np.float32), runtime)


def make_reference(run: Callable[[np.ndarray], np.ndarray], im_size: int) -> Reference:
    """Embed :func:`reference_inputs` with ``run`` (a reference-runtime call returning
    ``(n, D)``) and return the :class:`Reference` to store."""
    inputs = reference_inputs(im_size)
    out = np.asarray(run(inputs), dtype=np.float32)
    return Reference(REFERENCE_SEED, tuple(inputs.shape), inputs_digest(inputs), _unit(out))


def parity_cosines(embeddings: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Row-wise cosine between two ``(n, D)`` arrays (normalised here).

    Raises:
        InvalidInputError: the shapes differ.
    """
    a, b = np.asarray(embeddings, np.float64), np.asarray(reference, np.float64)
    if a.shape != b.shape:
        raise InvalidInputError(f"embeddings {a.shape} vs reference {b.shape}")
    return np.sum(_unit(a) * _unit(b), axis=1)


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)
