"""Training-side commands beyond `train`: MSN frame pretraining and the frame-mean export.

Registered on the main app by :mod:`polypindex.cli`; each parses its options and calls
one library function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from polypindex.model.errors import PolypIndexError


def pretrain_frames(
    data: Annotated[Path, typer.Option(help="Dataset folder (its frames and boxes are used).")],
    out: Annotated[Path, typer.Option(help="Output folder for msn.pt, last.ckpt and logs.")],
    config: Annotated[
        str,
        typer.Option(
            help="MSN config in training/configs (msn_resnet18, msn_vit_tiny...) or YAML."
        ),
    ] = "msn_resnet18",
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config field: key=value (repeatable)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from OUT/last.ckpt (same config).")
    ] = False,
) -> None:
    """Pretrain the frame encoder with Masked Siamese Networks on unlabelled frame crops."""
    from polypindex.cli import _fail, _parse_overrides
    from polypindex.training.msn import load_msn_config
    from polypindex.training.msn import pretrain_frames as run

    try:
        overrides = _parse_overrides(set_ or [])
        overrides.update(data_root=str(data), out_dir=str(out))
        result = run(load_msn_config(config, overrides), resume=resume)
    except (PolypIndexError, ValueError) as exc:
        raise _fail(exc) from exc
    typer.echo(
        f"frame encoder: {result.checkpoint} ({result.epochs_trained} epochs, "
        f"{result.n_frames} frames, final loss {result.final_loss:.4f})"
    )


def export_frame_mean(
    checkpoint: Annotated[Path, typer.Argument(help="msn.pt written by `pretrain-frames`.")],
    out: Annotated[Path, typer.Option(help="Output .onnx path.")],
    reid_threshold: Annotated[
        float | None, typer.Option(help="Same-polyp threshold to store (default 0.6).")
    ] = None,
) -> None:
    """Export the frame-mean baseline (per-frame embedding averaged over time) to ONNX."""
    from polypindex.cli import _fail
    from polypindex.model.export import export_frame_mean_onnx

    try:
        report = export_frame_mean_onnx(checkpoint, out, reid_threshold=reid_threshold)
    except PolypIndexError as exc:
        raise _fail(exc) from exc
    typer.echo(
        f"wrote {report.path} (encoder {report.encoder_version}); "
        f"torch vs ONNX Runtime max |diff| = {report.max_abs_diff:.2e}"
    )
