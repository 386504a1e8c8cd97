"""Mixed precision on the CPU: bf16 detection, the fp32 fallback, channels-last weights, and
training / the throughput benchmark on both paths (the machine's support is faked)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from polypindex.model.core.errors import ConfigError
from polypindex.model.nets.encoder import load_encoder_checkpoint
from polypindex.training import precision as prec
from polypindex.training.precision import (
    CpuBf16Support,
    cpu_bf16_support,
    read_cpu_flags,
    resolve_channels_last,
    resolve_precision,
)
from polypindex.training.train import train
from polypindex.training.train_config import load_train_config
from polypindex.training.trainer import make_trainer, numerics, uses_channels_last

SUPPORTED = cpu_bf16_support(flags={"avx2", "avx512_bf16", "amx_bf16"}, mkldnn_bf16=True)
UNSUPPORTED = cpu_bf16_support(flags={"avx2", "fma"}, mkldnn_bf16=True)


@pytest.fixture
def fake_cpu(monkeypatch: pytest.MonkeyPatch) -> Callable[[CpuBf16Support], None]:
    """``fake_cpu(support)``: detection returns ``support`` (and no CUDA is seen)."""

    def fake(support: CpuBf16Support) -> None:
        monkeypatch.setattr(prec, "cpu_bf16_support", lambda *a, **k: support)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    return fake


def test_read_cpu_flags(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nflags : other\n")
    assert read_cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert read_cpu_flags(tmp_path / "missing") == frozenset()
    (tmp_path / "noflags").write_text("processor : 0\n")
    assert read_cpu_flags(tmp_path / "noflags") == frozenset()


@pytest.mark.parametrize(
    ("flags", "mkldnn", "supported", "reason"),
    [
        ({"avx512_bf16"}, True, True, "avx512_bf16 and oneDNN"),
        ({"amx_bf16", "amx_tile"}, True, True, "amx_bf16"),
        ({"avx2", "avx512f"}, True, False, "emulated"),
        ({"avx512_bf16"}, False, False, "oneDNN reports no bf16"),
        (set(), False, False, "emulated"),
    ],
)
def test_cpu_bf16_support(flags: set[str], mkldnn: bool, supported: bool, reason: str) -> None:
    support = cpu_bf16_support(flags=flags, mkldnn_bf16=mkldnn)
    assert support.supported is supported
    assert reason in support.reason
    assert json.loads(json.dumps(support.to_dict()))["supported"] is supported


def test_detection_of_this_machine_is_consistent() -> None:
    """Native support needs a bf16 flag of /proc/cpuinfo and oneDNN agreeing."""
    support = cpu_bf16_support()
    has_flag = bool(read_cpu_flags() & set(prec.CPU_BF16_FLAGS))
    assert support.supported == (has_flag and support.mkldnn_bf16)


def test_auto_precision_cpu() -> None:
    assert resolve_precision("auto", "cpu", SUPPORTED) == "bf16-mixed"
    assert resolve_precision("auto", "cpu", UNSUPPORTED) == "32-true"  # the fp32 fallback


def test_explicit_precision_is_kept_and_emulated_bf16_warns() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("32-true", "cpu", UNSUPPORTED) == "32-true"
        assert resolve_precision("bf16-mixed", "cpu", SUPPORTED) == "bf16-mixed"
    with pytest.warns(UserWarning, match="emulated"):
        assert resolve_precision("bf16-mixed", "cpu", UNSUPPORTED) == "bf16-mixed"
    with pytest.raises(ConfigError, match="precision"):
        resolve_precision("", "cpu", SUPPORTED)


def test_auto_precision_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", "gpu", UNSUPPORTED) == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", "gpu", SUPPORTED) == "32-true"


def test_channels_last_setting() -> None:
    assert resolve_channels_last("auto", "bf16-mixed") is True
    assert resolve_channels_last("auto", "16-mixed") is True
    assert resolve_channels_last("auto", "32-true") is False
    assert resolve_channels_last(True, "32-true") is True
    assert resolve_channels_last(False, "bf16-mixed") is False
    with pytest.raises(ConfigError, match="channels_last"):
        resolve_channels_last("yes", "32-true")


def test_config_field_validated() -> None:
    assert load_train_config("demo").channels_last == "auto"
    assert load_train_config("demo", {"channels_last": False}).channels_last is False
    with pytest.raises(ConfigError, match="channels_last"):
        load_train_config("demo", {"channels_last": "sometimes"})


@pytest.mark.parametrize("preset", ["demo", "msn_demo"])
def test_demo_presets_train_in_auto_precision(preset: str) -> None:
    from polypindex.training.msn_config import load_msn_config

    config = load_msn_config(preset) if preset.startswith("msn") else load_train_config(preset)
    assert config.precision == "auto"


def test_trainer_fallback_and_bf16_paths(
    tmp_path: Path, fake_cpu: Callable[[CpuBf16Support], None]
) -> None:
    config = load_train_config("test_tiny", {"precision": "auto", "out_dir": str(tmp_path)})
    fake_cpu(UNSUPPORTED)
    assert numerics(config) == ("32-true", False)
    trainer = make_trainer(config, tmp_path, [], progress=False)
    assert str(trainer.precision) == "32-true" and not uses_channels_last(trainer)
    fake_cpu(SUPPORTED)
    assert numerics(config) == ("bf16-mixed", True)
    trainer = make_trainer(config, tmp_path, [], progress=False)
    assert str(trainer.precision) == "bf16-mixed" and uses_channels_last(trainer)


def _conv_weights(module: torch.nn.Module) -> Iterator[torch.Tensor]:
    return (p for p in module.parameters() if p.dim() == 4)


class _Probe(Callback):
    """Records the frame encoder's output dtype and the conv weights' layout per step."""

    def __init__(self) -> None:
        self.dtypes: list[torch.dtype] = []
        self.formats: set[bool] = set()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        backbone = pl_module.encoder.frame_encoder  # type: ignore[union-attr]
        backbone.register_forward_hook(self._record)

    def _record(self, module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if module.training:
            self.dtypes.append(output.dtype)
            self.formats |= {
                w.is_contiguous(memory_format=torch.channels_last) for w in _conv_weights(module)
            }


@pytest.mark.parametrize(
    ("support", "precision", "channels_last"),
    [(UNSUPPORTED, "32-true", False), (SUPPORTED, "bf16-mixed", True)],
)
def test_train_records_the_path_taken(
    disc_data: Path,
    tiny_config: Callable[..., Any],
    fake_cpu: Callable[[CpuBf16Support], None],
    support: CpuBf16Support,
    precision: str,
    channels_last: bool,
) -> None:
    """One tiny epoch per path: the chosen precision is the one trained with, recorded in
    the checkpoint and history; the saved encoder loads and embeds in fp32."""
    fake_cpu(support)
    config = tiny_config(disc_data, {"precision": "auto"})
    probe = _Probe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(config, progress=False, callbacks=[probe])
    seen = probe.dtypes
    assert probe.formats == {channels_last}
    assert seen and set(seen) == {torch.bfloat16 if precision == "bf16-mixed" else torch.float32}
    loaded = load_encoder_checkpoint(result.best_checkpoint)
    assert loaded.extra["precision"] == precision
    assert loaded.extra["channels_last"] is channels_last
    history = json.loads(result.history_path.read_text())
    assert (history["precision"], history["channels_last"]) == (precision, channels_last)
    frames = torch.zeros(2, 3, 3, 32, 32)
    with torch.no_grad():
        assert loaded.encoder.embed(frames).dtype == torch.float32


def test_benchmark_steps_in_each_precision(
    disc_data: Path, tiny_config: Callable[..., Any]
) -> None:
    """The throughput benchmark really computes in the precision it reports (it once
    ignored ``precision`` and timed fp32 twice)."""
    from polypindex.benchmarks.train_throughput import run

    config = tiny_config(disc_data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run(config, steps=1, warmup=0, precisions=("32-true", "bf16-mixed"))
    fp32, bf16 = result["results"]["32-true"], result["results"]["bf16-mixed"]
    assert fp32["backbone_compute_dtype"] == "float32"
    assert fp32["weights_memory_format"] == "contiguous"
    assert bf16["backbone_compute_dtype"] == "bfloat16"
    assert bf16["weights_memory_format"] == "channels_last"
    assert fp32["speedup_over_first"] == 1.0
    for entry in (fp32, bf16):
        assert entry["fragments_per_second"] > 0
        assert set(entry["parts_median_seconds"]) == {
            "forward_backbone",
            "forward_rest",
            "backward",
            "optimizer",
        }
    assert "supported" in result["cpu_bf16"] and result["environment"]["torch"]
