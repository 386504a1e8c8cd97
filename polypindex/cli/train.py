"""``polypindex train`` / ``pretrain-frames`` / ``export`` / ``export-frame-mean``: the
training-side commands. Each parses its options and calls one library function; torch
is imported inside the commands only.

The two training commands share their options: both are made by one factory from a
small table (help texts, default config, the library call).
"""

# No ``from __future__ import annotations``: the factories' option help texts are
# closure values inside ``Annotated[...]``, which must be evaluated where they stand.

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from polypindex.cli.options import ResumeOpt, SetOpt
from polypindex.model.errors import PolypIndexError


def _config(load: Any, config: str, set_: list[str] | None, data: Path, out: Path) -> Any:
    """A named/YAML config with the ``--set`` overrides and the data and output folders."""
    from polypindex.model.config import parse_overrides

    overrides = parse_overrides(set_ or [])
    overrides.update(data_root=str(data), out_dir=str(out))
    return load(config, overrides)


def _train(config: str, set_: list[str] | None, data: Path, out: Path, resume: bool) -> str:
    from polypindex.training.train import load_train_config, train

    result = train(_config(load_train_config, config, set_, data, out), resume=resume)
    return f"best checkpoint: {result.best_checkpoint}"


def _pretrain(config: str, set_: list[str] | None, data: Path, out: Path, resume: bool) -> str:
    from polypindex.training.msn import load_msn_config, pretrain_frames

    result = pretrain_frames(_config(load_msn_config, config, set_, data, out), resume=resume)
    return (
        f"frame encoder: {result.checkpoint} ({result.epochs_trained} epochs, "
        f"{result.n_frames} frames, final loss {result.final_loss:.4f})"
    )


@dataclass(frozen=True)
class _Trainer:
    """One training command: its help texts and the run (returns the line to print)."""

    doc: str
    data_help: str
    out_help: str
    config_help: str
    default_config: str
    run: Callable[[str, list[str] | None, Path, Path, bool], str]


TRAINERS = {
    "train": _Trainer(
        doc="Train the tracklet encoder (self-supervised by default) and keep the best checkpoint.",
        data_help="Dataset folder with train/val splits.",
        out_help="Output folder for encoder.pt, history.json, logs.",
        config_help="Named config in training/configs (demo, paper, supervised...) or a YAML path.",
        default_config="demo",
        run=_train,
    ),
    "pretrain-frames": _Trainer(
        doc="Pretrain the frame encoder with Masked Siamese Networks on unlabelled frame crops.",
        data_help="Dataset folder (its frames and boxes are used).",
        out_help="Output folder for msn.pt, last.ckpt and logs.",
        config_help="MSN config in training/configs (msn_resnet18, msn_vit_tiny...) or YAML.",
        default_config="msn_resnet18",
        run=_pretrain,
    ),
}


def _training_command(spec: _Trainer) -> Callable[..., None]:
    def command(
        data: Annotated[Path, typer.Option(help=spec.data_help)],
        out: Annotated[Path, typer.Option(help=spec.out_help)],
        config: Annotated[str, typer.Option(help=spec.config_help)] = spec.default_config,
        set_: SetOpt = None,
        resume: ResumeOpt = False,
    ) -> None:
        typer.echo(spec.run(config, set_, data, out, resume))

    command.__doc__ = spec.doc
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

    from polypindex.model.export import export_onnx

    if quantize is None:
        _exported(export_onnx(checkpoint, out, reid_threshold=reid_threshold))
        return
    from polypindex.model.quantize import QUANTIZATIONS, quantize_onnx

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
    from polypindex.model.export import export_frame_mean_onnx

    _exported(export_frame_mean_onnx(checkpoint, out, reid_threshold=reid_threshold))


def register(app: typer.Typer) -> None:
    for name, trainer in TRAINERS.items():
        app.command(name)(_training_command(trainer))
    app.command()(export)
    app.command("export-frame-mean")(export_frame_mean)
