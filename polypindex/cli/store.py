"""``polypindex db`` / ``index`` / ``delete``: the store and indexer commands.

Each command parses its options and calls one library function of
:mod:`polypindex.indexer`. ``polypindex index DATA`` (no sub-command) still means
``polypindex index coco DATA``. The ``index`` command of each input kind (``coco``,
``video``, ``frames``, ``dicom``) is made from the kind's declaration
(:mod:`polypindex.indexer.kinds`). Locations not given come from ``POLYPINDEX_*`` or
``--home`` (:func:`polypindex.cli.options.layout`).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from typing import TYPE_CHECKING, Annotated, Any, get_args, get_type_hints

import typer
from typer.core import TyperGroup

from polypindex.cli.options import (
    DatabaseOpt,
    HomeOpt,
    IndexDirOpt,
    ModelOpt,
    ProbesOpt,
    layout,
    option_groups,
)
from polypindex.model.core.errors import PolypIndexError

if TYPE_CHECKING:
    from polypindex.indexer.kinds.base import Batch, InputKind
    from polypindex.indexer.store import Store
    from polypindex.indexer.vectors import IndexPolicy
    from polypindex.model.core.layout import Layout


class _IndexGroup(TyperGroup):
    """``polypindex index``: one command per input kind (:func:`kind_commands`), then the
    others; a first argument that is no command goes to ``coco``.

    The kind commands are added when the group is first used, so that no other command
    imports the indexer to build its command line."""

    _kinds_added = False

    def _add_kinds(self) -> None:
        if not self._kinds_added:
            self.commands = {**kind_commands(), **self.commands}
            self._kinds_added = True

    def list_commands(self, ctx: Any) -> list[str]:
        self._add_kinds()
        return super().list_commands(ctx)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        self._add_kinds()
        return super().get_command(ctx, cmd_name)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        self._add_kinds()
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["coco", *args]
        return super().parse_args(ctx, args)


db_app = typer.Typer(help="Database schema migrations (Alembic).", no_args_is_help=True)
index_app = typer.Typer(
    cls=_IndexGroup,
    help="Index procedures (COCO folder, video, frames or DICOM + detections); rebuild or list index generations.",
    no_args_is_help=True,
)


@dataclasses.dataclass(frozen=True)
class PolicyOptions:
    """When a generation switches from the exact index to HNSW or IVF."""

    approximate_threshold: Annotated[
        int | None,
        typer.Option(
            help="Vectors from which the index is HNSW instead of exact (default 100000)."
        ),
    ] = None
    ivf_threshold: Annotated[
        int | None,
        typer.Option(
            help="Vectors from which the index is IVF instead of HNSW (default: never; IVF "
            "builds faster but needs a large nprobe for recall, see docs/store.md)."
        ),
    ] = None

    @property
    def policy(self) -> IndexPolicy | None:
        """The index policy, or None (the default one) when neither threshold is given."""
        from polypindex.indexer.vectors import IndexPolicy

        if not self.approximate_threshold and not self.ivf_threshold:
            return None
        settings: dict[str, Any] = (
            {"ivf_threshold": self.ivf_threshold} if self.ivf_threshold else {}
        )
        if self.approximate_threshold:
            settings["approximate_threshold"] = self.approximate_threshold
        return IndexPolicy(**settings)


@dataclasses.dataclass(frozen=True)
class Locations:
    """Where the encoder and probes are read and rows and vectors written (not given:
    ``POLYPINDEX_*``, else under ``--home``)."""

    model: ModelOpt = None
    database_url: DatabaseOpt = None
    index_dir: IndexDirOpt = None
    probes: ProbesOpt = None
    home: HomeOpt = None

    @property
    def layout(self) -> Layout:
        return layout(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Locations)})


@dataclasses.dataclass(frozen=True)
class IndexRun(Locations, PolicyOptions):
    """What every indexing command takes besides its input: the locations, the index
    policy, and whether to re-embed."""

    force: Annotated[bool, typer.Option(help="Re-embed procedures that are already indexed.")] = (
        False
    )
    engine: Annotated[
        str,
        typer.Option(
            help="local: this process (decoding overlapped with the encoder); ray: a Ray "
            "cluster with Ray Data (needs the `ray` extra; docs/runtimes.md)."
        ),
    ] = "local"
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster address for --engine ray (default: a local Ray)."),
    ] = None
    ray_actors: Annotated[
        int, typer.Option(help="Embedding actors for --engine ray (one GPU each if any).")
    ] = 1

    def run_batch(self, sources: Any, lay: Layout, encoder: Any, **options: Any) -> Any:
        """Index ``sources`` with the chosen engine; returns the IndexReport."""
        from polypindex.indexer.locations import anchors_for
        from polypindex.indexer.pipeline import index_sources

        if self.engine not in ("local", "ray"):
            raise PolypIndexError(f"--engine must be local or ray, got {self.engine!r}")
        options.update(
            force=self.force,
            probes=_installed_probes(lay, encoder.version),
            anchors=anchors_for(lay),
        )
        if self.engine == "local":
            return index_sources(sources, _open_store(lay), lay.index_dir, encoder, **options)
        import functools

        from polypindex.indexer.ray_engine import index_with_ray
        from polypindex.model.runtime.loader import load_encoder

        factory = functools.partial(
            load_encoder, lay.model_path, lay.runtime, lay.precision, engine_cache=lay.engine_cache
        )
        return index_with_ray(
            list(sources),
            _open_store(lay),
            lay.index_dir,
            factory,
            address=self.address,
            force=self.force,
            probes=options["probes"],
            actors=self.ray_actors,
            anchors=options["anchors"],
        )


def _echo(data: Any) -> None:
    typer.echo(json.dumps(data, default=str, indent=2))


def _load_encoder(lay: Layout) -> Any:
    from polypindex.model.runtime.loader import layout_encoder

    return layout_encoder(lay)  # POLYPINDEX_RUNTIME / POLYPINDEX_PRECISION (docs/runtimes.md)


def _installed_probes(lay: Layout, encoder_version: str) -> Any:
    from polypindex.indexer.predictions import installed_probes

    return installed_probes(lay.probes_folder, encoder_version)


def _open_store(lay: Layout) -> Store:
    from polypindex.indexer.store import Store

    return Store(lay.database_url)


# -- db ---------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
    database_url: DatabaseOpt = None,
    home: HomeOpt = None,
) -> None:
    """Migrate the database schema to the newest revision (or --revision)."""
    from polypindex.indexer.store_schema import upgrade_database

    lay = layout(home=home, database_url=database_url)
    before, after = upgrade_database(lay.database_url, revision)
    typer.echo(f"database schema: {before or '(empty)'} -> {after}")


@db_app.command("current")
def db_current(database_url: DatabaseOpt = None, home: HomeOpt = None) -> None:
    """Show the database's schema revision and the one this code needs."""
    from polypindex.indexer.store_schema import database_revisions

    lay = layout(home=home, database_url=database_url)
    current, head = database_revisions(lay.database_url)
    _echo({"current": current, "head": head, "up_to_date": current == head})


# -- index ------------------------------------------------------------------------------


def _typer_group(group: type) -> type:
    """A dataclass of :class:`~polypindex.indexer.kinds.base.CliArgument` /
    :class:`~polypindex.indexer.kinds.base.CliOption` fields as Typer reads it: the same
    fields, defaults and help, as ``typer.Argument`` / ``typer.Option``."""
    from polypindex.indexer.kinds.base import CliArgument, CliOption

    hints = get_type_hints(group, include_extras=True)
    fields: list[tuple[str, Any, Any]] = []
    for f in dataclasses.fields(group):
        kind, *marks = get_args(hints[f.name])
        (mark,) = [m for m in marks if isinstance(m, CliArgument | CliOption)]
        param = (
            typer.Argument(help=mark.help)
            if isinstance(mark, CliArgument)
            else typer.Option(help=mark.help)
        )
        default = {} if f.default is dataclasses.MISSING else {"default": f.default}
        fields.append((f.name, Annotated[kind, param], dataclasses.field(**default)))
    return dataclasses.make_dataclass(group.__name__, fields, frozen=True)


def _as(group: type, values: Any) -> Any:
    """``values`` (an instance of ``_typer_group(group)``) as a ``group``."""
    return group(**{f.name: getattr(values, f.name) for f in dataclasses.fields(values)})


def _index_command(kind: InputKind[Any]) -> Any:
    """``polypindex index <kind>``: the kind's inputs (and detections options), then the
    locations, policy and engine of :class:`IndexRun`."""
    from polypindex.indexer.kinds.base import DetectionOptions

    cli = kind.cli
    groups: dict[str, type] = {"procedure": cli.inputs}
    if cli.detections:
        groups["found"] = DetectionOptions
    typed = {name: _typer_group(group) for name, group in groups.items()}

    def command(**values: Any) -> None:
        given = {name: _as(group, values[name]) for name, group in groups.items()}
        _index(kind.cli_batches(given["procedure"], given.get("found")), values["run"])

    parameters = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation)
        for name, annotation in [*typed.items(), ("run", IndexRun)]
    ]
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    command.__name__ = f"index_{kind.name}"
    command.__doc__ = inspect.cleandoc(cli.inputs.__doc__ or "")
    return option_groups(command)


def kind_commands() -> dict[str, Any]:
    """One click command per input kind (:data:`~polypindex.indexer.kinds.registry.KINDS`),
    in the registry's order."""
    from polypindex.indexer.kinds.registry import KINDS

    commands = {}
    for name, kind in KINDS.items():
        single = typer.Typer(add_completion=False)
        single.command(name)(_index_command(kind))
        commands[name] = typer.main.get_command(single)
    return commands


def _index(batches: list[Batch], run: IndexRun) -> None:
    """Index each batch of a kind's command as ``run`` says, one report each."""
    lay = run.layout
    encoder = _load_encoder(lay)
    for batch in batches:
        report = run.run_batch(
            batch.sources(), lay, encoder, policy=run.policy, description=batch.description
        )
        _echo(report.to_dict())


@index_app.command("predict")
def index_predict(
    model: ModelOpt = None,
    probes: ProbesOpt = None,
    database_url: DatabaseOpt = None,
    home: HomeOpt = None,
) -> None:
    """(Re)compute the stored size/histology predictions of every indexed tracklet of the
    model's encoder with the installed probes (e.g. after training a new probe)."""
    from polypindex.indexer.predictions import predict_stored

    lay = layout(home=home, model=model, database_url=database_url, probes=probes)
    encoder = _load_encoder(lay)
    installed = _installed_probes(lay, encoder.version)
    if not installed:
        raise PolypIndexError(
            f"no probe installed in {lay.probes_folder}; train one "
            f"with `polypindex probe train size|histology`"
        )
    _echo(predict_stored(_open_store(lay), encoder.version, installed))


@index_app.command("retire")
def index_retire(
    encoder_version: Annotated[str, typer.Argument(help="The encoder version to retire.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    database_url: DatabaseOpt = None,
    index_dir: IndexDirOpt = None,
    home: HomeOpt = None,
) -> None:
    """Retire an index generation: delete the rows of one encoder version and its index
    folder (other generations are untouched)."""
    from polypindex.indexer.pipeline import retire_generation

    if not yes:
        typer.confirm(
            f"Delete every tracklet embedded by {encoder_version} and its index?", abort=True
        )
    lay = layout(home=home, database_url=database_url, index_dir=index_dir)
    removed = retire_generation(encoder_version, _open_store(lay), lay.index_dir)
    _echo({"encoder_version": encoder_version, "tracklets_removed": removed})


@index_app.command("rebuild")
@option_groups
def index_rebuild(
    encoder_version: Annotated[
        list[str] | None,
        typer.Option(help="Generation(s) to rebuild (repeatable; default: every one stored)."),
    ] = None,
    database_url: DatabaseOpt = None,
    index_dir: IndexDirOpt = None,
    home: HomeOpt = None,
    *,
    thresholds: PolicyOptions,
) -> None:
    """Rebuild index generations from scratch from the database (atomic save)."""
    from polypindex.indexer.generations import rebuild_generation

    lay = layout(home=home, database_url=database_url, index_dir=index_dir)
    store = _open_store(lay)
    out = []
    for version in encoder_version or store.encoder_versions():
        index = rebuild_generation(lay.index_dir, store, version, policy=thresholds.policy)
        out.append(
            {
                "encoder_version": version,
                "vectors": len(index),
                "kind": index.kind,
                "directory": str(index.directory),
            }
        )
    _echo(out)


@index_app.command("generations")
def index_generations(
    database_url: DatabaseOpt = None, index_dir: IndexDirOpt = None, home: HomeOpt = None
) -> None:
    """List the index generations (one per encoder version) and whether each is in sync."""
    from polypindex.indexer.generations import describe_generations

    lay = layout(home=home, database_url=database_url, index_dir=index_dir)
    _echo(describe_generations(lay.index_dir, _open_store(lay)))


# -- delete -----------------------------------------------------------------------------


def delete(
    procedure_uid: Annotated[str, typer.Argument(help="UID of the procedure to remove.")],
    database_url: DatabaseOpt = None,
    index_dir: IndexDirOpt = None,
    home: HomeOpt = None,
) -> None:
    """Remove a procedure's rows and its vectors from every index generation."""
    from polypindex.indexer.pipeline import delete_procedure

    lay = layout(home=home, database_url=database_url, index_dir=index_dir)
    removed = delete_procedure(procedure_uid, _open_store(lay), lay.index_dir)
    typer.echo(f"deleted procedure {procedure_uid}: {len(removed)} tracklets removed")
