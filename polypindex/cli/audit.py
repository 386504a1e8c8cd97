"""``polypindex audit``: the newest rows of the audit trail (every write to the service,
every key change; :mod:`polypindex.indexer.audit`)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from polypindex.cli.keys import JsonOpt, open_store
from polypindex.cli.options import DatabaseOpt, HomeOpt


def audit(
    limit: Annotated[int, typer.Option("--limit", min=1, help="Rows to show.")] = 50,
    database_url: DatabaseOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the audit trail, newest first: when, who, the result, what and its target."""
    from polypindex.indexer.audit import recent

    with open_store(database_url, home) as store:
        rows = recent(store, limit)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    for r in rows:
        target = f"\t{r.target}" if r.target else ""
        typer.echo(f"{r.at:%Y-%m-%d %H:%M:%S}\t{r.actor}\t{r.status}\t{r.action}{target}")


def register(app: typer.Typer) -> None:
    app.command()(audit)
