"""``polypindex import-checkpoint SRC DST``: a checkpoint of the reference implementation
(its HMVE state dict) as a PolypIndex encoder checkpoint
(docs/training.md#importing-a-reference-checkpoint). torch is imported inside the command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def import_checkpoint(
    src: Annotated[
        Path, typer.Argument(help="The reference's checkpoint (.ckpt, or its HMVE state dict).")
    ],
    dst: Annotated[Path, typer.Argument(help="The encoder.pt to write (for `polypindex export`).")],
    preset: Annotated[
        str, typer.Option(help="Training preset whose crop and fragment settings are stored.")
    ] = "paper",
    n_heads: Annotated[
        int | None,
        typer.Option(help="Attention heads (default: the checkpoint's hyper_parameters, else 8)."),
    ] = None,
    reid_threshold: Annotated[
        float | None,
        typer.Option(help="Same-polyp probability threshold to store, in [0, 1]."),
    ] = None,
) -> None:
    """Convert a reference-implementation checkpoint into a PolypIndex encoder checkpoint."""
    from polypindex.model.core.errors import ConfigError
    from polypindex.training.reference_import import import_reference_checkpoint

    if reid_threshold is not None and not 0.0 <= reid_threshold <= 1.0:
        raise ConfigError(f"--reid-threshold must be in [0, 1], got {reid_threshold}")
    report = import_reference_checkpoint(src, dst, preset, n_heads, reid_threshold)
    cfg = report.encoder_config
    typer.echo(
        f"wrote {report.destination} (encoder {report.encoder_version}: {cfg.backbone}, "
        f"d_model {cfg.d_model}, {cfg.n_layers} layers, {cfg.n_heads} heads); "
        f"{len(report.mapped)} tensors mapped, {len(report.dropped)} dropped "
        f"(projector / loss)"
    )


def register(app: typer.Typer) -> None:
    app.command("import-checkpoint")(import_checkpoint)
