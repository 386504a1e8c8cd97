"""``polypindex serve`` and ``polypindex demo``: the HTTP API, and the demo that builds
what it serves. The web stack is imported inside the commands only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from polypindex.cli.options import (
    DatabaseOpt,
    HomeOpt,
    HostOpt,
    IndexDirOpt,
    ModelOpt,
    PortOpt,
    given,
    layout,
)

if TYPE_CHECKING:
    from polypindex.service.settings import Settings


def _run(settings: Settings, host: str, port: int) -> None:
    import uvicorn

    from polypindex.service.app import create_app

    uvicorn.run(create_app(settings), host=host, port=port)


def serve(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    model: ModelOpt = None,
    database_url: DatabaseOpt = None,
    index_dir: IndexDirOpt = None,
    home: HomeOpt = None,
) -> None:
    """Serve the HTTP API (search, re-identification, health) with uvicorn."""
    from polypindex.service.settings import Settings

    options = given(home=home, model=model, database_url=database_url, index_dir=index_dir)
    _run(Settings(**options), host, port)


def demo(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    no_serve: Annotated[
        bool, typer.Option("--no-serve", help="Build everything, then exit.")
    ] = False,
    home: HomeOpt = None,
) -> None:
    """Synthetic data → demo model (built once) → index → API. What `make serve` runs."""
    from polypindex.demo import build_demo

    model_path = build_demo(layout(home=home))
    if not no_serve:
        from polypindex.service.settings import Settings

        _run(Settings(**given(home=home), model_path=model_path), host, port)


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(demo)
