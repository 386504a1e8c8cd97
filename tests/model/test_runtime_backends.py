"""The encoder runtimes behind one interface: ONNX Runtime and OpenVINO on the same file,
the automatic choice (faked CPUs and GPU builds), provider order, and one encoder version
whatever the runtime or precision. The tiny hand-built graph of ``helpers.onnx_graphs`` has a closed form."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.onnx_graphs import onnx_metadata, write_mean_colour_encoder

from polypindex.model.core.errors import ConfigError, ModelLoadError
from polypindex.model.core.layout import Layout
from polypindex.model.core.versions import canonical_version
from polypindex.model.data.config import FragmentConfig, PreprocessConfig
from polypindex.model.runtime import onnx as runtime_module
from polypindex.model.runtime.base import int8_version
from polypindex.model.runtime.loader import (
    cpu_flags,
    cpu_has_bf16,
    layout_encoder,
    load_encoder,
    resolve_runtime,
)
from polypindex.model.runtime.onnx import (
    CPU,
    CUDA,
    TENSORRT,
    OnnxEncoder,
    select_providers,
)
from polypindex.model.runtime.openvino import openvino_available

IM, DIM = 16, 4
VERSION = "hmve-fake-0123456789ab"
PREPROCESS = PreprocessConfig(im_size=IM)
FRAGMENT = FragmentConfig(stride=2, fragment_length=-1, max_frames=4)
WEIGHT = np.arange(3 * DIM, dtype=np.float32).reshape(3, DIM) / 7.0 - 0.5
BIAS = np.asarray([0.1, -0.2, 0.3, 0.05], dtype=np.float32)
needs_openvino = pytest.mark.skipif(not openvino_available(), reason="openvino not installed")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    meta = onnx_metadata(VERSION, PREPROCESS, FRAGMENT, DIM, "0.6")
    return write_mean_colour_encoder(
        tmp_path_factory.mktemp("backends") / "m.onnx", WEIGHT, BIAS, meta, im_size=IM
    )


def _frames(b: int = 3, s: int = 5) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((b, s, 3, IM, IM)).astype(np.float32)


def _reference(x: np.ndarray) -> np.ndarray:
    emb = (x.mean(axis=(3, 4)) @ WEIGHT).mean(axis=1) + BIAS
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


# --- one version per model --------------------------------------------------------------


def test_runtime_precision_is_not_part_of_the_version() -> None:
    """Legacy runtime suffixes map onto their base; INT8 (other weights) keeps its own."""
    assert canonical_version(VERSION) == VERSION
    assert canonical_version(VERSION + "+bf16") == VERSION
    assert canonical_version(VERSION + "+fp16") == VERSION
    assert canonical_version(VERSION + "+int8+bf16") == VERSION + "+int8"
    assert canonical_version("+bf16") == "+bf16"  # nothing left to keep: not a suffix
    assert int8_version(VERSION) == VERSION + "+int8"
    assert int8_version(VERSION + "+bf16") == VERSION + "+int8"


def test_onnxruntime_encoder_describes_itself(model_path: Path) -> None:
    enc = OnnxEncoder(model_path)
    assert enc.version == VERSION  # an FP32 model on the CPU keeps its exported version
    info = enc.describe()
    assert info == {
        "runtime": "onnxruntime",
        "provider": CPU,
        "providers": [CPU],
        "precision": "fp32",
        "encoder_version": VERSION,
    }
    np.testing.assert_allclose(enc.embed(_frames()), _reference(_frames()), atol=1e-5)


# --- ONNX Runtime providers (GPU builds faked) ----------------------------------------


def test_provider_order_on_a_cpu_only_build() -> None:
    assert select_providers([CPU]) == ([CPU], "fp32")
    assert select_providers(["AzureExecutionProvider", CPU], "fp32") == ([CPU], "fp32")


def test_provider_order_on_a_gpu_build(tmp_path: Path) -> None:
    available = [TENSORRT, CUDA, CPU]
    providers, precision = select_providers(available, "auto", tmp_path / "trt")
    assert precision == "fp16"
    assert [p if isinstance(p, str) else p[0] for p in providers] == [TENSORRT, CUDA, CPU]
    trt_options = providers[0][1]  # type: ignore[index]
    assert trt_options["trt_fp16_enable"] is True
    assert trt_options["trt_engine_cache_enable"] is True
    assert trt_options["trt_engine_cache_path"] == str(tmp_path / "trt")
    # FP32 asked for: TensorRT (FP16) is left out
    assert select_providers(available, "fp32") == ([CUDA, CPU], "fp32")
    # CUDA only build
    assert select_providers([CUDA, CPU], "auto") == ([CUDA, CPU], "fp32")


def test_provider_errors() -> None:
    with pytest.raises(ConfigError, match="OpenVINO"):
        select_providers([CPU], "bf16")
    with pytest.raises(ConfigError, match="TensorRT"):
        select_providers([CUDA, CPU], "fp16")


def test_onnx_encoder_passes_the_faked_gpu_order_and_records_fp16(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a faked TensorRT build the session is asked for TRT(FP16) → CUDA → CPU; the
    providers the session reports decide the precision shown (FP16 only if TRT really
    runs); the version is the model's either way."""
    seen: dict[str, Any] = {}

    class FakeSession:
        def __init__(self, real: Any, providers: list[str]) -> None:
            self._real, self._providers = real, providers

        def __getattr__(self, name: str) -> Any:
            return getattr(self._real, name)

        def get_providers(self) -> list[str]:
            return self._providers

    real_open = runtime_module._open_session

    def fake_open(path: Path, providers: Any, options: Any) -> Any:
        seen["providers"] = providers
        return FakeSession(real_open(path, [CPU], options), [TENSORRT, CUDA, CPU])

    monkeypatch.setattr(
        runtime_module.ort, "get_available_providers", lambda: [TENSORRT, CUDA, CPU]
    )
    monkeypatch.setattr(runtime_module, "_open_session", fake_open)
    monkeypatch.setattr(runtime_module, "_preload_gpu_libraries", lambda: None)
    enc = OnnxEncoder(model_path, precision="auto", engine_cache=tmp_path / "engines")
    assert [p if isinstance(p, str) else p[0] for p in seen["providers"]] == [TENSORRT, CUDA, CPU]
    assert (tmp_path / "engines").is_dir()
    assert enc.describe()["provider"] == TENSORRT
    assert enc.precision == "fp16" and enc.version == VERSION


def test_gpu_providers_failing_fall_back_to_the_cpu(
    model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = runtime_module._open_session

    def fake_open(path: Path, providers: Any, options: Any) -> Any:
        if providers != [CPU]:
            raise ModelLoadError("libcudart.so.13: cannot open shared object file")
        return real_open(path, providers, options)

    monkeypatch.setattr(runtime_module.ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(runtime_module, "_open_session", fake_open)
    monkeypatch.setattr(runtime_module, "_preload_gpu_libraries", lambda: None)
    enc = OnnxEncoder(model_path, precision="fp32")
    info = enc.describe()
    assert info["provider"] == CPU and "libcudart" in info["fallback_reason"]
    assert enc.version == VERSION


# --- the automatic choice --------------------------------------------------------------

AMX = {"avx512f", "amx_bf16", "amx_int8", "avx512_bf16"}
AVX2 = {"avx2", "fma"}


@pytest.mark.parametrize(
    ("runtime", "precision", "flags", "providers", "have_ov", "expected"),
    [
        ("auto", "auto", AMX, [CPU], True, ("openvino", "bf16")),
        ("auto", "auto", {"avx512_bf16"}, [CPU], True, ("openvino", "bf16")),
        ("auto", "auto", AVX2, [CPU], True, ("onnxruntime", "auto")),
        ("auto", "auto", AMX, [CPU], False, ("onnxruntime", "auto")),  # not installed
        ("auto", "auto", AMX, [CUDA, CPU], True, ("onnxruntime", "auto")),  # a GPU build
        ("auto", "fp32", AMX, [CPU], True, ("openvino", "fp32")),
        ("auto", "bf16", AVX2, [CPU], True, ("openvino", "bf16")),
        ("auto", "fp16", AMX, [TENSORRT, CUDA, CPU], True, ("onnxruntime", "fp16")),
        ("openvino", "auto", AVX2, [CPU], True, ("openvino", "fp32")),
        ("onnxruntime", "auto", AMX, [CPU], True, ("onnxruntime", "auto")),
    ],
)
def test_resolve_runtime(
    runtime: str,
    precision: str,
    flags: set[str],
    providers: list[str],
    have_ov: bool,
    expected: tuple[str, str],
) -> None:
    got = resolve_runtime(
        runtime, precision, flags=flags, ort_providers=providers, have_openvino=have_ov
    )
    assert got == expected


@pytest.mark.parametrize(
    ("runtime", "precision"), [("onnxruntime", "bf16"), ("openvino", "fp16"), ("tvm", "auto")]
)
def test_resolve_runtime_refuses(runtime: str, precision: str) -> None:
    with pytest.raises(ConfigError):
        resolve_runtime(runtime, precision, flags=AMX, ort_providers=[CPU], have_openvino=True)


def test_cpu_flags_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n")
    assert cpu_flags(info) == {"fpu", "avx2", "amx_bf16", "amx_tile"}
    assert cpu_has_bf16(cpu_flags(info))
    assert not cpu_has_bf16({"avx2", "avx512f", "avx512_vnni"})
    assert cpu_flags(tmp_path / "missing") == set()


def test_layout_settings_choose_the_runtime(
    model_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("POLYPINDEX_RUNTIME", "onnxruntime")
    monkeypatch.setenv("POLYPINDEX_PRECISION", "fp32")
    lay = Layout(home=tmp_path, model_path=model_path)
    assert (lay.runtime, lay.precision) == ("onnxruntime", "fp32")
    assert lay.engine_cache == tmp_path.resolve() / "cache" / "tensorrt"
    assert layout_encoder(lay).describe()["runtime"] == "onnxruntime"
    monkeypatch.setenv("POLYPINDEX_RUNTIME", "tensorflow")
    with pytest.raises(ValueError, match="runtime"):
        Layout(home=tmp_path)


# --- OpenVINO on the same file ---------------------------------------------------------


@needs_openvino
def test_openvino_matches_onnxruntime(model_path: Path) -> None:
    ov_enc = load_encoder(model_path, "openvino", "fp32", threads=1)
    ort_enc = load_encoder(model_path, "onnxruntime", "fp32", threads=1)
    assert ov_enc.version == ort_enc.version == VERSION
    assert ov_enc.describe()["runtime"] == "openvino"
    assert ov_enc.describe()["precision"] == "fp32"
    for b, s in ((1, 1), (3, 5), (2, 9)):  # dynamic batch and length
        x = _frames(b, s)
        np.testing.assert_allclose(ov_enc.embed(x), ort_enc.embed(x), atol=1e-5)
    seqs = [_frames(1, n)[0] for n in (3, 5, 3)]
    np.testing.assert_allclose(
        ov_enc.embed_sequences(seqs), ort_enc.embed_sequences(seqs), atol=1e-5
    )


@needs_openvino
def test_openvino_bf16_serves_the_models_version(model_path: Path) -> None:
    """BF16 asked for: the precision shown is what the compiled model reports (FP32 on a
    CPU without BF16 units); the version is the model's on every CPU, after parity."""
    enc = load_encoder(model_path, "openvino", "bf16", threads=1)
    info = enc.describe()
    assert info["requested_precision"] == "bf16"
    assert info["precision"] in ("bf16", "fp32")
    assert enc.version == info["encoder_version"] == VERSION
    assert info["parity"]["passed"] and info["parity"]["min_cosine"] >= 0.999
    cos = np.sum(enc.embed(_frames()) * _reference(_frames()), axis=1)
    assert np.all(cos > 0.999)


@needs_openvino
def test_openvino_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_encoder(tmp_path / "nope.onnx", "openvino", "fp32")


@needs_openvino
def test_openvino_unknown_precision(model_path: Path) -> None:
    from polypindex.model.runtime.openvino import OpenVinoEncoder

    with pytest.raises(ConfigError):
        OpenVinoEncoder(model_path, precision="int4")
