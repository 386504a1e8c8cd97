"""``polypindex synth``: the synthetic colonoscopy dataset (COCO with video fields)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from polypindex.cli.options import SeedOpt


def synth(
    out: Annotated[Path, typer.Option(help="Output dataset folder (images/ + annotations/).")],
    seed: SeedOpt = 0,
    procedures: Annotated[int, typer.Option(help="Number of procedures (videos).")] = 20,
    frames: Annotated[int, typer.Option(help="Frames per procedure.")] = 1200,
    width: Annotated[int, typer.Option(help="Frame width in pixels.")] = 320,
    height: Annotated[int, typer.Option(help="Frame height in pixels.")] = 256,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (default: up to 2).")
    ] = None,
    interleave: Annotated[
        float,
        typer.Option(
            help="In [0, 1]: how often visits of different polyps swap or overlap in time "
            "(more: noisier temporal bags)."
        ),
    ] = 0.25,
    lookalike_fraction: Annotated[
        float, typer.Option(help="Fraction of polyps copying another polyp's look.")
    ] = 0.5,
    polyps: Annotated[
        tuple[int, int],
        typer.Option(help="Inclusive range of polyps per procedure (more: noisier temporal bags)."),
    ] = (1, 5),
) -> None:
    """Generate a synthetic colonoscopy dataset in the COCO-with-video format."""
    from polypindex.synth import SynthConfig, generate

    fields: dict[str, Any] = {
        "n_procedures": procedures,
        "frames_per_procedure": frames,
        "image_width": width,
        "image_height": height,
        "seed": seed,
        "interleave": interleave,
        "lookalike_fraction": lookalike_fraction,
        "polyps_per_procedure": polyps,
        "workers": workers,  # None: the config's default
    }
    config = SynthConfig(**{k: v for k, v in fields.items() if v is not None})
    report = generate(out, config)
    typer.echo(json.dumps({k: report[k] for k in report if k != "config"}, indent=2, default=str))


def register(app: typer.Typer) -> None:
    app.command()(synth)
