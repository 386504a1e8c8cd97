"""``polypindex synth``: the synthetic colonoscopy dataset (COCO with video fields)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer


def synth(
    out: Annotated[Path, typer.Option(help="Output dataset folder (images/ + annotations/).")],
    preset: Annotated[
        str,
        typer.Option(
            help="Named generator settings: 'default', or 'shifted' (another seed, palette, "
            "polyp count, interleave and camera speed: the generalisation check of "
            "docs/results.md). The options below override the preset's values."
        ),
    ] = "default",
    seed: Annotated[
        int | None,
        typer.Option("--seed", help="Random seed; the same seed, the same result (default 0)."),
    ] = None,
    procedures: Annotated[
        int | None, typer.Option(help="Number of procedures (videos) (default 20).")
    ] = None,
    frames: Annotated[int | None, typer.Option(help="Frames per procedure (default 1200).")] = None,
    width: Annotated[int, typer.Option(help="Frame width in pixels.")] = 320,
    height: Annotated[int, typer.Option(help="Frame height in pixels.")] = 256,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (default: up to 2).")
    ] = None,
    interleave: Annotated[
        float | None,
        typer.Option(
            help="In [0, 1]: how often visits of different polyps swap or overlap in time "
            "(more: noisier temporal bags) (default 0.25)."
        ),
    ] = None,
    lookalike_fraction: Annotated[
        float | None,
        typer.Option(help="Fraction of polyps copying another polyp's look (default 0.5)."),
    ] = None,
    polyps: Annotated[
        tuple[int, int] | None,
        typer.Option(
            help="Inclusive range of polyps per procedure (more: noisier temporal bags) "
            "(default 1 5)."
        ),
    ] = None,
) -> None:
    """Generate a synthetic colonoscopy dataset in the COCO-with-video format."""
    from polypindex.model.core.errors import ConfigError
    from polypindex.synth import SYNTH_PRESETS, generate, synth_preset

    if preset not in SYNTH_PRESETS:
        raise ConfigError(f"unknown --preset {preset!r}; known: {', '.join(sorted(SYNTH_PRESETS))}")
    fields: dict[str, Any] = {
        "n_procedures": procedures,
        "frames_per_procedure": frames,
        "image_width": width,
        "image_height": height,
        "seed": seed,
        "interleave": interleave,
        "lookalike_fraction": lookalike_fraction,
        "polyps_per_procedure": polyps,
        "workers": workers,  # None: the preset's (or the config's) default
    }
    config = synth_preset(preset, **{k: v for k, v in fields.items() if v is not None})
    report = generate(out, config)
    typer.echo(json.dumps({k: report[k] for k in report if k != "config"}, indent=2, default=str))


def register(app: typer.Typer) -> None:
    app.command()(synth)
