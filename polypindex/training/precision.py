"""Numeric precision and memory format of the training runs (HMVE and MSN).

``precision: auto`` (the demo and MSN presets) picks, per machine:

- a CUDA run: ``bf16-mixed`` when the GPU supports bf16, else ``32-true``;
- a CPU run: ``bf16-mixed`` when the CPU has native bf16 arithmetic — ``avx512_bf16`` or
  ``amx_bf16`` in ``/proc/cpuinfo`` *and* PyTorch's oneDNN reporting bf16 support —
  else ``32-true``. Without those units bf16 is emulated and several times slower than
  fp32 (measured: docs/training.md#mixed-precision-on-the-cpu), so it is never chosen.

``channels_last: auto`` stores the convolution weights channels-last (NHWC) whenever the
resolved precision is a mixed one: oneDNN's bf16 convolutions run on NHWC, and a NCHW
network pays a layout reorder before and after every convolution. Inputs need no
conversion: a convolution whose weight is channels-last returns channels-last output.

Any explicit Lightning precision (``32-true``, ``bf16-mixed``, ``16-mixed``, ...) is used
as given; ``bf16-mixed`` on a CPU without bf16 units warns that it is emulated.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from polypindex.model.core.errors import ConfigError
from polypindex.model.runtime.loader import BF16_FLAGS, cpu_flags

AUTO = "auto"
CPU_BF16_FLAGS = BF16_FLAGS  # the encoder runtime's choice reads the same flags
CHANNELS_LAST_CHOICES = (AUTO, True, False)


def read_cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (the one reader: :func:`polypindex.model.runtime.loader.cpu_flags`)."""
    return frozenset(cpu_flags(cpuinfo))


def _mkldnn_bf16() -> bool:
    try:
        return bool(
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


@dataclass(frozen=True)
class CpuBf16Support:
    """Whether this CPU trains fast in bf16, and why (recorded in benchmark JSON).

    Attributes:
        supported: native bf16 units and oneDNN bf16 kernels.
        flags: the bf16 flags of :data:`CPU_BF16_FLAGS` the CPU has.
        mkldnn_bf16: PyTorch's oneDNN reports bf16 support.
        reason: one line for logs and reports.
    """

    supported: bool
    flags: tuple[str, ...]
    mkldnn_bf16: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "supported": self.supported,
            "flags": list(self.flags),
            "mkldnn_bf16": self.mkldnn_bf16,
            "reason": self.reason,
        }


def cpu_bf16_support(
    flags: frozenset[str] | set[str] | None = None, mkldnn_bf16: bool | None = None
) -> CpuBf16Support:
    """Detect native CPU bf16; ``flags`` / ``mkldnn_bf16`` stand in for the machine (tests)."""
    present = read_cpu_flags() if flags is None else frozenset(flags)
    onednn = _mkldnn_bf16() if mkldnn_bf16 is None else mkldnn_bf16
    found = tuple(f for f in CPU_BF16_FLAGS if f in present)
    if not found:
        reason = f"no {' or '.join(CPU_BF16_FLAGS)} in the CPU flags: bf16 would be emulated"
    elif not onednn:
        reason = f"CPU has {', '.join(found)} but PyTorch's oneDNN reports no bf16 support"
    else:
        reason = f"CPU has {', '.join(found)} and oneDNN bf16 kernels"
    return CpuBf16Support(bool(found) and onednn, found, onednn, reason)


def _uses_cuda(accelerator: str) -> bool:
    if accelerator in ("gpu", "cuda"):
        return True
    return accelerator == AUTO and torch.cuda.is_available()


def resolve_precision(
    precision: str, accelerator: str = AUTO, cpu: CpuBf16Support | None = None
) -> str:
    """The Lightning precision to train with: ``auto`` resolved (module docstring).

    Args:
        precision: ``auto`` or a Lightning precision string.
        accelerator: the run's Lightning accelerator (``auto``, ``cpu``, ``gpu``, ...).
        cpu: the CPU's bf16 support (default: detected).
    """
    if not isinstance(precision, str) or not precision:
        raise ConfigError(f"precision must be 'auto' or a Lightning precision, got {precision!r}")
    on_cuda = _uses_cuda(accelerator)
    if precision != AUTO:
        if precision.startswith("bf16") and not on_cuda:
            support = cpu or cpu_bf16_support()
            if not support.supported:
                warnings.warn(
                    f"precision={precision} on this CPU: {support.reason} (slower than 32-true); "
                    f"use precision: auto to train in fp32 here",
                    stacklevel=2,
                )
        return precision
    if on_cuda:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if (cpu or cpu_bf16_support()).supported else "32-true"


def resolve_channels_last(setting: Any, precision: str) -> bool:
    """Whether to store conv weights channels-last: ``auto`` = for a mixed ``precision``
    (an already resolved one)."""
    if setting is True or setting is False:
        return setting
    if setting == AUTO:
        return not str(precision).startswith(("32", "64"))
    raise ConfigError(f"channels_last must be auto, true or false, got {setting!r}")


class ChannelsLast(Callback):
    """Converts the module's 4-D weights to channels-last when fitting starts (after a
    resumed checkpoint or an MSN initialisation is loaded: ``load_state_dict`` keeps the
    destination's layout)."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        to_channels_last(pl_module)


def to_channels_last(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with its 4-D parameters and buffers channels-last (in place)."""
    return module.to(memory_format=torch.channels_last)


def autocast(precision: str, device: str = "cpu") -> torch.autocast:
    """The autocast context Lightning's ``MixedPrecision`` plugin uses for ``precision``
    (disabled for a ``32`` / ``64`` precision): for code that steps a module by hand
    (benchmarks)."""
    if precision.startswith("bf16"):
        return torch.autocast(device, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device, dtype=torch.float16)
    return torch.autocast(device, enabled=False)
