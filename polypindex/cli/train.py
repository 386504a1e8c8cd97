"""``polypindex train`` / ``pretrain-frames`` / ``export`` / ``export-frame-mean``: the
training-side commands. Each parses its options and calls one library function; torch
is imported inside the commands only.

The two training commands share their options: both are made by one factory from a
small table (help texts, default config, the library call, whose docstring is the
command's help). ``--data`` and ``--out`` default to the config's ``data_root`` and
``out_dir``.
"""

# No ``from __future__ import annotations``: the factories' option help texts are
# closure values inside ``Annotated[...]``, which must be evaluated where they stand.

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from polypindex.cli.options import ResumeOpt, SetOpt
from polypindex.model.core.errors import PolypIndexError


def _overrides(set_: list[str] | None, data: Path | None, out: Path | None) -> dict[str, Any]:
    """The ``--set`` overrides, then ``--data`` and ``--out`` (when given) as the config's
    ``data_root`` and ``out_dir``."""
    from polypindex.model.data.config import parse_overrides

    overrides = parse_overrides(set_ or [])
    if data is not None:
        overrides["data_root"] = str(data)
    if out is not None:
        overrides["out_dir"] = str(out)
    return overrides


def _train(config: str, overrides: dict[str, Any], resume: bool) -> str:
    """Train the tracklet encoder (self-supervised by default) and keep the best checkpoint."""
    from polypindex.training.train import train
    from polypindex.training.train_config import load_train_config

    result = train(load_train_config(config, overrides), resume=resume)
    return f"best checkpoint: {result.best_checkpoint}"


def _pretrain(config: str, overrides: dict[str, Any], resume: bool) -> str:
    """Pretrain the frame encoder with Masked Siamese Networks on unlabelled frame crops."""
    from polypindex.training.msn import pretrain_frames
    from polypindex.training.msn_config import load_msn_config

    result = pretrain_frames(load_msn_config(config, overrides), resume=resume)
    return (
        f"frame encoder: {result.checkpoint} ({result.epochs_trained} epochs, "
        f"{result.n_frames} frames, final loss {result.final_loss:.4f})"
    )


@dataclass(frozen=True)
class _Trainer:
    """One training command: its help texts and the run (returns the line to print)."""

    data_help: str
    out_help: str
    config_help: str
    default_config: str
    run: Callable[[str, dict[str, Any], bool], str]  # (config, overrides, resume)


TRAINERS = {
    "train": _Trainer(
        data_help="Dataset folder with train/val splits",
        out_help="Output folder for encoder.pt, history.json, logs",
        config_help="Named config in training/configs (demo, paper, supervised...) or a YAML path.",
        default_config="demo",
        run=_train,
    ),
    "pretrain-frames": _Trainer(
        data_help="Dataset folder, of which only the frames and boxes are read",
        out_help="Output folder for msn.pt, last.ckpt and logs",
        config_help="MSN config in training/configs (msn_resnet18, msn_vit_tiny...) or YAML.",
        default_config="msn_resnet18",
        run=_pretrain,
    ),
}


_DATA_DEFAULT = " (default: the config's data_root)."
_OUT_DEFAULT = " (default: the config's out_dir)."


def _training_command(spec: _Trainer) -> Callable[..., None]:
    def command(
        data: Annotated[Path | None, typer.Option(help=f"{spec.data_help}{_DATA_DEFAULT}")] = None,
        out: Annotated[Path | None, typer.Option(help=f"{spec.out_help}{_OUT_DEFAULT}")] = None,
        config: Annotated[str, typer.Option(help=spec.config_help)] = spec.default_config,
        set_: SetOpt = None,
        resume: ResumeOpt = False,
    ) -> None:
        typer.echo(spec.run(config, _overrides(set_, data, out), resume))

    command.__doc__ = spec.run.__doc__
    return command


def _exported(report: Any) -> None:
    typer.echo(
        f"wrote {report.path} (encoder {report.encoder_version}); "
        f"torch vs ONNX Runtime max |diff| = {report.max_abs_diff:.2e}"
    )


OnnxOutOpt = Annotated[Path, typer.Option(help="Output .onnx path.")]


def export(
    checkpoint: Annotated[Path, typer.Argument(help="encoder.pt written by `polypindex train`.")],
    out: OnnxOutOpt,
    reid_threshold: Annotated[
        float | None, typer.Option(help="Override the stored same-polyp threshold.")
    ] = None,
    quantize: Annotated[
        str | None,
        typer.Option(
            help="int8: write a static INT8 model (its own encoder version), "
            "calibrated on crops of --calibration-data (docs/runtimes.md)."
        ),
    ] = None,
    calibration_data: Annotated[
        Path | None, typer.Option(help="COCO dataset whose crops calibrate --quantize.")
    ] = None,
    calibration_split: Annotated[str, typer.Option(help="Calibration split.")] = "train",
    calibration_tracklets: Annotated[int, typer.Option(help="Calibration tracklets.")] = 16,
) -> None:
    """Export the encoder to ONNX (dynamic batch and length) and check parity with torch;
    with --quantize int8, write the INT8 model instead."""
    import tempfile

    from polypindex.model.nets.export import export_onnx

    if quantize is None:
        _exported(export_onnx(checkpoint, out, reid_threshold=reid_threshold))
        return
    from polypindex.model.nets.quantize import QUANTIZATIONS, quantize_onnx

    if quantize not in QUANTIZATIONS:
        raise PolypIndexError(f"--quantize must be one of {QUANTIZATIONS}, got {quantize!r}")
    if calibration_data is None:
        raise PolypIndexError("--quantize needs --calibration-data (a COCO dataset folder)")
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(checkpoint, Path(tmp) / "fp32.onnx", reid_threshold=reid_threshold)
        report = quantize_onnx(
            fp32.path, out, calibration_data, calibration_split, calibration_tracklets
        )
    typer.echo(
        f"wrote {report.path} (encoder {report.encoder_version}, from {report.fp32_version}); "
        f"FP32 vs INT8 cosine on {report.calibration_tracklets} calibration tracklets: "
        f"min {report.min_cosine:.4f}, mean {report.mean_cosine:.4f}"
    )


def export_frame_mean(
    checkpoint: Annotated[Path, typer.Argument(help="msn.pt written by `pretrain-frames`.")],
    out: OnnxOutOpt,
    reid_threshold: Annotated[
        float | None, typer.Option(help="Same-polyp threshold to store (default 0.6).")
    ] = None,
) -> None:
    """Export the frame-mean baseline (per-frame embedding averaged over time) to ONNX."""
    from polypindex.model.nets.export import export_frame_mean_onnx

    _exported(export_frame_mean_onnx(checkpoint, out, reid_threshold=reid_threshold))


def register(app: typer.Typer) -> None:
    for name, trainer in TRAINERS.items():
        app.command(name)(_training_command(trainer))
    app.command()(export)
    app.command("export-frame-mean")(export_frame_mean)
