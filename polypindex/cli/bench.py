"""``polypindex bench retrieval|reid``: the offline evaluation protocols
(docs/method.md#evaluation-protocols)."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from polypindex.cli.options import DataOpt, SplitOpt

PROTOCOLS = {
    "retrieval": "Retrieval protocol (mAP, HR@1, HR@5) on a split, with reference rows.",
    "reid": "Re-identification protocol (AUROC, AUPR, ROC/PR curves) on a split.",
}


class MapRule(StrEnum):
    """``--map-rule``: the mAP rules of model.scoring.evaluation.MAP_RULES."""

    ours = "ours"
    reference = "reference"
    both = "both"


MapRuleOpt = Annotated[
    MapRule,
    typer.Option(
        help="ours (scikit-learn AP), reference (the reference implementation's torchmetrics "
        "rule: same-polyp items with cosine <= 0 are dropped), or both; see "
        "docs/method.md#evaluation-protocols."
    ),
]


def model_pairs(models: list[str], default_name: Callable[[Path], str]) -> list[tuple[str, Path]]:
    """``--model`` values as ``(name, path)``: ``name=path`` pairs, or bare paths named
    by ``default_name``."""
    pairs = []
    for m in models:
        name, _, path = m.rpartition("=") if "=" in m else (default_name(Path(m)), "", m)
        pairs.append((name, Path(path)))
    return pairs


def _protocol_command(kind: str) -> Callable[..., None]:
    """The command running protocol ``kind`` (the two share every option)."""

    def command(
        data: DataOpt,
        model: Annotated[
            list[str], typer.Option(help="Encoder .onnx, or a name=path pair; repeatable.")
        ],
        split: SplitOpt = "test",
        out: Annotated[Path, typer.Option(help="Output folder for JSON and PNGs.")] = Path(
            "var/bench"
        ),
        reference_rows: Annotated[
            bool, typer.Option(help="Add chance and colour-histogram rows.")
        ] = True,
        map_rule: MapRuleOpt = MapRule.ours,
    ) -> None:
        from polypindex.benchmarks.protocols import evaluate, format_table

        if kind != "retrieval" and map_rule is not MapRule.ours:
            raise typer.BadParameter("--map-rule applies to `bench retrieval` only")
        named = dict(model_pairs(model, lambda path: path.stem))
        results = evaluate(
            data,
            split,
            named,
            out,
            protocols=(kind,),
            reference_rows=reference_rows,
            map_rule=map_rule.value,
        )
        typer.echo(format_table(results, kind))
        typer.echo(f"results written under {out}")

    return command


def register(app: typer.Typer) -> None:
    for kind, description in PROTOCOLS.items():
        app.command(kind, help=description)(_protocol_command(kind))
