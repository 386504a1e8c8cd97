"""The ``polypindex`` command line. Each command parses its options and calls one
library function; heavy imports (torch, the web stack) happen inside commands so
``polypindex --help`` is instant and serving never imports torch."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from polypindex.cli_probe import BENCH_CONTEXT, bench_histology, bench_size, probe_app
from polypindex.cli_store import db_app, delete, index_app
from polypindex.cli_train import export_frame_mean, pretrain_frames
from polypindex.model.errors import PolypIndexError
from polypindex.paths import layout

app = typer.Typer(
    name="polypindex",
    help="Self-supervised tracklet embeddings for colonoscopy polyp re-identification.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(
    help="Offline evaluation (SPEC §6) and speed benchmarks.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")

HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="Artefact folder (default: $POLYPINDEX_HOME or ./var)."),
]


def _fail(exc: BaseException) -> typer.Exit:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


def _parse_overrides(pairs: list[str]) -> dict[str, Any]:
    from polypindex.model.config import parse_overrides

    return parse_overrides(pairs)


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Output dataset folder (images/ + annotations/).")],
    seed: Annotated[int, typer.Option(help="Random seed; same seed gives the same dataset.")] = 0,
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

    try:
        kwargs: dict[str, Any] = dict(
            n_procedures=procedures,
            frames_per_procedure=frames,
            image_width=width,
            image_height=height,
            seed=seed,
            interleave=interleave,
            lookalike_fraction=lookalike_fraction,
            polyps_per_procedure=polyps,
        )
        if workers is not None:
            kwargs["workers"] = workers
        report = generate(out, SynthConfig(**kwargs))
    except (PolypIndexError, ValueError) as exc:
        raise _fail(exc) from exc
    typer.echo(json.dumps({k: report[k] for k in report if k != "config"}, indent=2, default=str))


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="Dataset folder with train/val splits.")],
    out: Annotated[Path, typer.Option(help="Output folder for encoder.pt, history.json, logs.")],
    config: Annotated[
        str,
        typer.Option(
            help="Named config in training/configs (demo, paper, supervised...) or a YAML path."
        ),
    ] = "demo",
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config field: key=value (repeatable)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from OUT/last.ckpt (same config).")
    ] = False,
) -> None:
    """Train the tracklet encoder (self-supervised by default) and keep the best checkpoint."""
    from polypindex.training.train import load_train_config
    from polypindex.training.train import train as run_train

    try:
        overrides = _parse_overrides(set_ or [])
        overrides.update(data_root=str(data), out_dir=str(out))
        result = run_train(load_train_config(config, overrides), resume=resume)
    except (PolypIndexError, ValueError) as exc:
        raise _fail(exc) from exc
    typer.echo(f"best checkpoint: {result.best_checkpoint}")


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="encoder.pt written by `polypindex train`.")],
    out: Annotated[Path, typer.Option(help="Output .onnx path.")],
    reid_threshold: Annotated[
        float | None, typer.Option(help="Override the stored same-polyp threshold.")
    ] = None,
) -> None:
    """Export the encoder to ONNX (dynamic batch and length) and check parity with torch."""
    from polypindex.model.export import export_onnx

    try:
        report = export_onnx(checkpoint, out, reid_threshold=reid_threshold)
    except PolypIndexError as exc:
        raise _fail(exc) from exc
    typer.echo(
        f"wrote {report.path} (encoder {report.encoder_version}); "
        f"torch vs ONNX Runtime max |diff| = {report.max_abs_diff:.2e}"
    )


app.command("pretrain-frames")(pretrain_frames)
app.command("export-frame-mean")(export_frame_mean)
app.add_typer(index_app, name="index")
app.add_typer(db_app, name="db")
app.add_typer(probe_app, name="probe")
bench_app.command("size", context_settings=BENCH_CONTEXT)(bench_size)
bench_app.command("histology", context_settings=BENCH_CONTEXT)(bench_histology)
app.command()(delete)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    model: Annotated[
        Path | None, typer.Option(help="Encoder .onnx (default: the demo model).")
    ] = None,
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL (default: SQLite under --home).")
    ] = None,
    index_dir: Annotated[
        Path | None, typer.Option(help="FAISS index folder (default: under --home).")
    ] = None,
    home: HomeOpt = None,
) -> None:
    """Serve the HTTP API (search, re-identification, health) with uvicorn."""
    import uvicorn

    from polypindex.service.app import create_app
    from polypindex.service.settings import Settings

    lay = layout(home)
    settings = Settings(
        home=lay.home,
        model_path=model or lay.demo_model_dir / "encoder.onnx",
        database_url=database_url or lay.database_url,
        index_dir=index_dir or lay.index_dir,
    )
    uvicorn.run(create_app(settings), host=host, port=port)


@app.command()
def demo(
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    no_serve: Annotated[
        bool, typer.Option("--no-serve", help="Build everything, then exit.")
    ] = False,
    home: HomeOpt = None,
) -> None:
    """Synthetic data → demo model (built once) → index → API. What `make serve` runs."""
    from polypindex.demo import build_demo

    lay = layout(home)
    try:
        build_demo(lay)
    except PolypIndexError as exc:
        raise _fail(exc) from exc
    if not no_serve:
        serve(host=host, port=port, model=None, database_url=None, index_dir=None, home=lay.home)


@bench_app.command("retrieval")
def bench_retrieval(
    data: Annotated[Path, typer.Option(help="Dataset folder.")],
    model: Annotated[
        list[str], typer.Option(help="Encoder .onnx, or a name=path pair; repeatable.")
    ],
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    out: Annotated[Path, typer.Option(help="Output folder for JSON and PNGs.")] = Path("var/bench"),
    reference_rows: Annotated[
        bool, typer.Option(help="Add chance and colour-histogram rows.")
    ] = True,
) -> None:
    """Retrieval protocol (mAP, HR@1, HR@5) on a split, with reference rows."""
    _bench("retrieval", data, model, split, out, reference_rows)


@bench_app.command("reid")
def bench_reid(
    data: Annotated[Path, typer.Option(help="Dataset folder.")],
    model: Annotated[
        list[str], typer.Option(help="Encoder .onnx, or a name=path pair; repeatable.")
    ],
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    out: Annotated[Path, typer.Option(help="Output folder for JSON and PNGs.")] = Path("var/bench"),
    reference_rows: Annotated[
        bool, typer.Option(help="Add chance and colour-histogram rows.")
    ] = True,
) -> None:
    """Re-identification protocol (AUROC, AUPR, ROC/PR curves) on a split."""
    _bench("reid", data, model, split, out, reference_rows)


def _bench(
    kind: str, data: Path, models: list[str], split: str, out: Path, reference_rows: bool
) -> None:
    from polypindex.benchmarks.protocols import evaluate, format_table

    named = {}
    for m in models:
        name, _, path = m.rpartition("=") if "=" in m else (Path(m).stem, "", m)
        named[name] = Path(path)
    try:
        results = evaluate(
            data, split, named, out, protocols=(kind,), reference_rows=reference_rows
        )
    except PolypIndexError as exc:
        raise _fail(exc) from exc
    typer.echo(format_table(results, kind))
    typer.echo(f"results written under {out}")


def main() -> None:  # pragma: no cover - console entry
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
