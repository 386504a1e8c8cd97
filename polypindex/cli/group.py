"""``polypindex index group``: (re)compute the stored polyp entities of indexed
procedures (docs/grouping.md); ``polypindex bench counting``: the counting benchmark."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from polypindex.cli.options import DatabaseOpt, DataOpt, HomeOpt, ModelOpt, SeedOpt, layout
from polypindex.model.scoring.grouping import DEFAULT_CUT, DEFAULT_METHOD, METHODS

MethodOpt = Annotated[str, typer.Option("--method", help=f"Grouping method: {', '.join(METHODS)}.")]
CutOpt = Annotated[
    float | None,
    typer.Option(
        "--cut",
        help=f"Merge at a same-polyp probability of at least this (default: {DEFAULT_CUT} "
        "for a calibrated model, else the model's reid_threshold).",
    ),
]


def index_group(
    procedure: Annotated[
        list[str] | None,
        typer.Option("--procedure", help="Only this procedure UID (repeatable; default: all)."),
    ] = None,
    method: MethodOpt = DEFAULT_METHOD,
    cut: CutOpt = None,
    model: ModelOpt = None,
    database_url: DatabaseOpt = None,
    home: HomeOpt = None,
) -> None:
    """Group each indexed procedure's tracklets of the model's encoder into polyp entities
    (with the model's calibrated same-polyp probability when it has one) and store them."""
    from polypindex.indexer.grouping import group_stored, reid_calibration
    from polypindex.indexer.store import Store
    from polypindex.model.core.errors import InvalidInputError
    from polypindex.model.runtime.loader import layout_encoder

    if method not in METHODS:
        raise InvalidInputError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    lay = layout(home=home, model=model, database_url=database_url)
    encoder = layout_encoder(lay)
    reports = group_stored(
        Store(lay.database_url),
        encoder.version,
        reid_calibration(encoder),
        uids=procedure or None,
        method=method,
        cut=cut,
        reid_threshold=encoder.reid_threshold,
    )
    typer.echo(json.dumps([r.to_dict() for r in reports], indent=2))


def bench_counting(
    data: DataOpt,
    model: Annotated[
        list[str],
        typer.Option(help="Trained encoder .onnx (name=path; repeatable: one per seed)."),
    ],
    untrained: Annotated[
        list[str] | None,
        typer.Option(help="Untrained encoder .onnx (name=path; repeatable), a baseline."),
    ] = None,
    split: Annotated[str, typer.Option("--split", help="Split to evaluate.")] = "test",
    fit_split: Annotated[
        str, typer.Option("--fit-split", help="Split to fit calibration and choose cuts on.")
    ] = "val",
    out: Annotated[Path, typer.Option(help="Output folder for JSON and PNG.")] = Path(
        "var/bench/counting"
    ),
    cache_dir: Annotated[Path | None, typer.Option(help="Crop cache folder.")] = None,
    seed: SeedOpt = 0,
) -> None:
    """Polyps per procedure: count error, fragmentation at < 5 % merge false positives and
    ARI of each grouping method and baseline (docs/grouping.md#evaluation)."""
    from polypindex.benchmarks.counting import run_counting
    from polypindex.cli.bench import model_pairs

    result = run_counting(
        data,
        model_pairs(model, lambda p: p.parent.name),
        model_pairs(untrained or [], lambda p: p.parent.name),
        split=split,
        fit_split=fit_split,
        out=out,
        cache_dir=cache_dir,
        seed=seed,
    )
    typer.echo(result["table"])
    typer.echo(f"wrote {out / 'counting.json'}")


def register_index(app: typer.Typer) -> None:
    app.command("group")(index_group)


def register_bench(app: typer.Typer) -> None:
    app.command("counting")(bench_counting)
