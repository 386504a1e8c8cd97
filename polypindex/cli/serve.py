"""``polypindex serve`` and ``polypindex demo``: the HTTP API, and the demo that builds
what it serves. The web stack is imported inside the commands only.

One configuration source: the service's :class:`~polypindex.service.settings.Settings`
get only the options the user gave (:func:`serve_settings`); everything else comes
from the ``POLYPINDEX_*`` environment (``POLYPINDEX_MODEL_PATH``, ``POLYPINDEX_HOST``,
``POLYPINDEX_AUTH``, ...) or the defaults under ``home``. Before uvicorn starts, the
process logs JSON lines (``service.observability``) and a service that would be
reachable from other machines without any API key is refused
(:func:`polypindex.service.auth.preflight`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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


def serve_settings(host: str | None = None, port: int | None = None, **locations: Any) -> Settings:
    """The served app's settings: the given options (``None``: not given) over the
    environment over the defaults. ``locations``: as for :func:`given`, plus
    ``model_path`` for an explicit model (the demo's)."""
    from polypindex.service.settings import Settings

    model_path: Path | None = locations.pop("model_path", None)
    options = given(**locations)
    if model_path is not None:
        options["model_path"] = model_path
    options.update({k: v for k, v in (("host", host), ("port", port)) if v is not None})
    return Settings(**options)


def _run(settings: Settings) -> None:
    import uvicorn

    from polypindex.service.app import create_app
    from polypindex.service.auth import preflight
    from polypindex.service.observability import configure_logging, scrub_pairs

    preflight(settings)  # refuses a non-loopback host without keys, before binding
    configure_logging(scrub=scrub_pairs(settings.home, settings.data_roots))
    app = create_app(settings)
    # log_config=None: keep the JSON logging above; the request records replace the access log
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False)


def serve(
    host: HostOpt = None,
    port: PortOpt = None,
    model: ModelOpt = None,
    database_url: DatabaseOpt = None,
    index_dir: IndexDirOpt = None,
    home: HomeOpt = None,
) -> None:
    """Serve the HTTP API (search, re-identification, indexing, health, metrics) with uvicorn.

    Binding anything but a loopback address needs an API key in the database
    (`polypindex keys create NAME --scope admin`) or POLYPINDEX_AUTH=open (docs/deploy.md).
    """
    _run(
        serve_settings(
            host, port, home=home, model=model, database_url=database_url, index_dir=index_dir
        )
    )


def demo(
    host: HostOpt = None,
    port: PortOpt = None,
    no_serve: Annotated[
        bool, typer.Option("--no-serve", help="Build everything, then exit.")
    ] = False,
    home: HomeOpt = None,
) -> None:
    """Synthetic data → demo model (built once) → index → API. What `make serve` runs."""
    from polypindex.demo import build_demo

    model_path = build_demo(layout(home=home))
    if not no_serve:
        _run(serve_settings(host, port, home=home, model_path=model_path))


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(demo)
