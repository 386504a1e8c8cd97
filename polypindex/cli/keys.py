"""``polypindex keys create|list|revoke``: the HTTP service's API keys (docs/deploy.md).

Keys live in the store (``api_keys``), so these commands take the same
``--database-url`` / ``--home`` as the service. ``create`` prints the token once, alone
on stdout (``TOKEN=$(polypindex keys create ci --scope read)``); only its SHA-256 is
kept. Each change is written to the audit trail (actor ``cli:<user>``).
"""

from __future__ import annotations

import getpass
import json
from typing import TYPE_CHECKING, Annotated

import typer

from polypindex.cli.options import DatabaseOpt, HomeOpt, layout

if TYPE_CHECKING:
    from polypindex.indexer.store import Store

keys_app = typer.Typer(help="API keys of the HTTP service (scopes read, write, admin).")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def cli_actor() -> str:
    """Who runs the command, as written to the audit trail."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name (e.g. an arbitrary uid in a container)
        return "cli"


def open_store(database_url: str | None, home: object) -> Store:
    from polypindex.indexer.store import Store

    return Store(layout(home=home, database_url=database_url).database_url)


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="A unique name (letters, digits, . _ -).")],
    scope: Annotated[
        str, typer.Option("--scope", help="read (queries), write (+ indexing, delete) or admin.")
    ] = "read",
    database_url: DatabaseOpt = None,
    home: HomeOpt = None,
) -> None:
    """Create a key and print its token (shown once: store it now)."""
    from polypindex.indexer.keys import create_key

    with open_store(database_url, home) as store:
        key, token = create_key(store, name, scope, actor=cli_actor())
    typer.echo(
        f"created key {key.name!r} (scope {key.scope}); its token, shown only now, is on stdout",
        err=True,
    )
    typer.echo(token)


@keys_app.command("list")
def list_(database_url: DatabaseOpt = None, home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """List the keys (names, scopes, dates; never the tokens)."""
    from polypindex.indexer.keys import list_keys

    with open_store(database_url, home) as store:
        keys = list_keys(store)
    if as_json:
        typer.echo(json.dumps([k.to_dict() for k in keys], indent=2))
        return
    if not keys:
        typer.echo("no keys (create one with `polypindex keys create NAME --scope admin`)")
    for k in keys:
        state = "active" if k.active else f"revoked {k.revoked_at:%Y-%m-%d %H:%M}"
        typer.echo(f"{k.name}\t{k.scope}\tcreated {k.created_at:%Y-%m-%d %H:%M}\t{state}")


@keys_app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="The key's name.")],
    database_url: DatabaseOpt = None,
    home: HomeOpt = None,
) -> None:
    """Revoke a key: its token stops working at once (the name is not reused)."""
    from polypindex.indexer.keys import revoke_key

    with open_store(database_url, home) as store:
        key = revoke_key(store, name, actor=cli_actor())
    typer.echo(f"revoked key {key.name!r}")
