"""The root ``polypindex`` app: the command groups, ``--version`` and the console entry point."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from polypindex.cli import (
    audit,
    bench,
    data,
    exchange,
    group,
    import_checkpoint,
    info,
    keys,
    probe,
    serve,
    store,
    train,
)
from polypindex.cli.boundary import EXIT_INTERRUPTED, BoundaryGroup

app = typer.Typer(
    cls=BoundaryGroup,
    name="polypindex",
    help="Self-supervised tracklet embeddings for colonoscopy polyp re-identification.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def package_version() -> str:
    """The installed distribution's version (``unknown`` when run from an uninstalled tree)."""
    try:
        return version("polypindex")
    except PackageNotFoundError:
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"polypindex {package_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Self-supervised tracklet embeddings for colonoscopy polyp re-identification."""


for module in (data, train, serve):
    module.register(app)
import_checkpoint.register(app)
info.register(app)
bench_app = typer.Typer(
    help="Offline evaluation (retrieval mAP, re-ID AUROC; docs/method.md) and speed benchmarks.",
    no_args_is_help=True,
)
bench.register(bench_app)
probe.register_bench(bench_app)
group.register_bench(bench_app)
app.add_typer(bench_app, name="bench")
app.add_typer(store.index_app, name="index")
group.register_index(store.index_app)
app.add_typer(store.db_app, name="db")
app.add_typer(probe.probe_app, name="probe")
app.command()(store.delete)
app.add_typer(keys.keys_app, name="keys")
audit.register(app)
exchange.register(app)


def main(args: Sequence[str] | None = None) -> None:
    """The console entry point (``polypindex = "polypindex.cli:main"``): run the app;
    exit with its code (see :mod:`polypindex.cli.boundary`)."""
    try:
        app(args=args, prog_name="polypindex")
    except KeyboardInterrupt:  # before a command started (e.g. while importing)
        typer.echo("\ninterrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
