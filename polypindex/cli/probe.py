"""``polypindex probe train`` and ``polypindex bench size|histology``: the size and
histology probes (docs/method.md#probes, ``docs/probes.md``).

Each command parses its options and calls one library function
(:func:`training.probe.train_probe_on_encoder`, :func:`benchmarks.probes.run`);
torch is imported inside the commands only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from polypindex.cli.bench import model_pairs
from polypindex.cli.options import HomeOpt, SeedOpt, layout

probe_app = typer.Typer(
    help="Size (diminutive ≤ 5 mm) and histology (adenoma) probes on a frozen ONNX encoder.",
    no_args_is_help=True,
)
BENCH_TASKS = {
    "size": "Size probe benchmark: diminutive (≤ 5 mm) vs not, identity-weighted macro F1 "
    "on the test split.",
    "histology": "Histology probe benchmark: adenoma vs not, identity accuracy and NPV on "
    "diminutive polyps.",
}
RESERVED_ROWS = ("majority_class", "color_histogram")


class Task(StrEnum):
    size = "size"
    histology = "histology"


class Head(StrEnum):
    linear = "linear"
    mlp = "mlp"


HeadOpt = Annotated[
    Head,
    typer.Option(help="linear, or mlp (LayerNorm → Linear(256) → GELU → Dropout 0.1 → Linear)."),
]
EpochsOpt = Annotated[int, typer.Option(help="Training epochs (the last epoch is kept).")]
CacheOpt = Annotated[
    Path | None,
    typer.Option(
        help="Embedding cache folder (default: <home>/cache/probe_embeddings); one file "
        "per encoder version and dataset split."
    ),
]


def _caches(home: Path | None, cache_dir: Path | None) -> tuple[Path, Path]:
    """The probe-embedding cache (``--cache-dir`` or under home) and the crop cache."""
    lay = layout(home=home)
    return cache_dir or lay.probe_cache, lay.crop_cache


@probe_app.command("train")
def probe_train(
    task: Annotated[
        Task, typer.Argument(help="size (diminutive vs not) or histology (adenoma vs not).")
    ],
    data: Annotated[
        Path, typer.Option(help="Dataset folder (COCO with size/histology per polyp).")
    ],
    model: Annotated[
        Path, typer.Option(help="The frozen encoder, an .onnx from `polypindex export`.")
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="Output .npz (default: <model dir>/probes/<task>.npz)."),
    ] = None,
    head: HeadOpt = Head.linear,
    seed: SeedOpt = 0,
    epochs: EpochsOpt = 20,
    split: Annotated[str, typer.Option(help="Dataset split to train and calibrate on.")] = "train",
    fragment_length: Annotated[
        int | None,
        typer.Option(help="Override the encoder's fragment length (default: its own rule)."),
    ] = None,
    cache_dir: CacheOpt = None,
    home: HomeOpt = None,
) -> None:
    """Train a probe on the encoder's fragment embeddings, calibrate it, export it (numpy .npz).

    The split's labelled polyps are divided 70/30 by polyp (seeded by --seed); the
    probe is trained on the 70 % and temperature-scaled on the 30 %. Writes the probe,
    a JSON report and a reliability diagram next to it.
    """
    from polypindex.training.probe import train_probe_on_encoder
    from polypindex.training.probe_head import ProbeTrainConfig

    cache, crops = _caches(home, cache_dir)
    fit, path = train_probe_on_encoder(
        task.value,
        data,
        model,
        out=out,
        config=ProbeTrainConfig(head=head.value, epochs=epochs, seed=seed),
        split=split,
        cache_dir=cache,
        crop_cache_dir=crops,
        fragment_length=fragment_length,
    )
    val = fit.report["val"]
    summary = {
        "probe": str(path),
        "version": fit.probe.version,
        "encoder_version": fit.probe.encoder_version,
        "temperature": fit.probe.temperature,
        "label_balance": fit.report["label_balance"],
        "excluded_unknown_label": fit.report["excluded_unknown_label"],
        "val_ece_before": val["ece_before"],
        "val_ece_after": val["ece_after"],
        "val_identity_accuracy": val["identity_level"]["accuracy"],
        "val_identity_macro_f1": val["identity_level"]["macro_f1"],
    }
    typer.echo(json.dumps(summary, indent=2))


ModelsOpt = Annotated[
    list[str] | None,
    typer.Option("--model", help="Encoder .onnx, or a name=path pair; repeatable."),
]
SeedsOpt = Annotated[
    list[int] | None,
    typer.Option(help="Seeds (each: polyp split + probe init): --seeds 0 1 2 (default 0 1 2)."),
]
# `--seeds 0 1 2`: click options take one value each, so the values after the first
# arrive as extra arguments; _seeds() folds them back in (anything else is an error).
BENCH_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": False}


def _seeds(ctx: typer.Context, seeds: list[int] | None) -> list[int]:
    extra = list(ctx.args)
    bad = [a for a in extra if not a.lstrip("-").isdigit()]
    if bad:
        raise typer.BadParameter(f"unexpected argument(s) {bad}; seeds must be integers")
    values = list(seeds or []) + [int(a) for a in extra]
    if extra and not seeds:
        raise typer.BadParameter(f"unexpected argument(s) {extra}")
    return values or [0, 1, 2]


def _rows(models: list[str]) -> dict[str, Path]:
    """The ``--model`` rows by name (bare paths: named by their folder); names are unique."""
    named: dict[str, Path] = {}
    for name, path in model_pairs(models, lambda path: path.parent.name):
        if name in named or name in RESERVED_ROWS:
            raise typer.BadParameter(
                f"duplicate or reserved row name {name!r}; use name=path", param_hint="--model"
            )
        named[name] = path
    return named


def _bench_command(task: str) -> Callable[..., None]:
    """The benchmark command of probe ``task`` (the two share every option)."""

    def command(
        ctx: typer.Context,
        data: Annotated[Path, typer.Option(help="Dataset folder with train and test splits.")],
        model: ModelsOpt = None,
        seeds: SeedsOpt = None,
        out: Annotated[Path, typer.Option(help="Output folder (JSON, Markdown, PNGs).")] = Path(
            f"var/bench/probes_{task}"
        ),
        head: HeadOpt = Head.linear,
        epochs: EpochsOpt = 20,
        cache_dir: CacheOpt = None,
        home: HomeOpt = None,
    ) -> None:
        from polypindex.benchmarks.probes import markdown, run

        seed_list = _seeds(ctx, seeds)
        named = _rows(model or [])
        cache, crops = _caches(home, cache_dir)
        t0 = time.perf_counter()
        results = run(
            task,
            data,
            named,
            seed_list,
            out,
            head=head.value,
            epochs=epochs,
            cache_dir=cache,
            crop_cache_dir=crops,
        )
        typer.echo(markdown(results))
        typer.echo(f"wall time {time.perf_counter() - t0:.1f} s; results written under {out}")

    return command


def register_bench(bench_app: typer.Typer) -> None:
    for task, description in BENCH_TASKS.items():
        bench_app.command(task, help=description, context_settings=BENCH_CONTEXT)(
            _bench_command(task)
        )
