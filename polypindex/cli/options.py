"""The options several commands share, and how the given ones become a :class:`Layout`.

Every location option defaults to ``None`` (not given): :func:`given` drops those, so
the ``POLYPINDEX_*`` environment (read once, by :class:`polypindex.model.core.layout.Layout`)
and the defaults under ``--home`` fill in the rest, and an environment variable is
never overridden by a command-line default.

Option groups: a command parameter annotated with a dataclass of options (such as
:class:`polypindex.cli.store.IndexTarget`) is shown as that dataclass's options and handed to the command
as one value (:func:`option_groups`), so a set of options is declared once.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, get_type_hints

import typer

if TYPE_CHECKING:
    from polypindex.model.core.layout import Layout

F = TypeVar("F", bound=Callable[..., Any])

HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="Artefact folder (default: $POLYPINDEX_HOME or ./var)."),
]
ModelOpt = Annotated[
    Path | None,
    typer.Option(
        "--model",
        help="Encoder .onnx (default: $POLYPINDEX_MODEL_PATH, else the demo model under --home).",
    ),
]
DatabaseOpt = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="SQLAlchemy URL (default: $POLYPINDEX_DATABASE_URL, else SQLite under --home).",
    ),
]
IndexDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--index-dir", help="Index root folder (default: $POLYPINDEX_INDEX_DIR, else under --home)."
    ),
]
ProbesOpt = Annotated[
    Path | None,
    typer.Option(
        "--probes",
        help="Folder of the size/histology probes (size.npz, histology.npz) whose predictions "
        "are stored with each tracklet (default: $POLYPINDEX_PROBES_DIR, else probes/ next to "
        "the model; none there: none).",
    ),
]
SeedOpt = Annotated[
    int, typer.Option("--seed", help="Random seed; the same seed, the same result.")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config field: key=value (repeatable)."),
]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue from OUT/last.ckpt (same config).")
]
DataOpt = Annotated[Path, typer.Option("--data", help="Dataset folder.")]
SplitOpt = Annotated[str, typer.Option("--split", help="Split to evaluate.")]
HostOpt = Annotated[
    str | None,
    typer.Option("--host", help="Bind address (default: $POLYPINDEX_HOST, else 127.0.0.1)."),
]
PortOpt = Annotated[
    int | None, typer.Option("--port", help="Port (default: $POLYPINDEX_PORT, else 8000).")
]


def given(
    home: Path | None = None,
    model: Path | None = None,
    database_url: str | None = None,
    index_dir: Path | None = None,
    probes: Path | None = None,
) -> dict[str, Any]:
    """The location options the user gave, keyed by :class:`Layout` field (``None``:
    not given, left to ``POLYPINDEX_*`` or the default under ``home``)."""
    fields = {
        "home": home,
        "model_path": model,
        "database_url": database_url,
        "index_dir": index_dir,
        "probes_dir": probes,
    }
    return {name: value for name, value in fields.items() if value is not None}


def layout(**options: Any) -> Layout:
    """The artefact layout for the given location options (see :func:`given`)."""
    from polypindex.model.core.layout import Layout

    return Layout(**given(**options))


def option_groups(command: F) -> F:
    """Expand the option-group parameters of a command for Typer.

    Each parameter annotated with a dataclass is replaced, in the signature Typer
    reads, by that dataclass's fields (their annotated options and defaults); the
    wrapper rebuilds the dataclass from them before calling ``command``.
    """
    hints = get_type_hints(command, include_extras=True)
    parameters: list[inspect.Parameter] = []
    groups: dict[str, tuple[type, list[str]]] = {}
    for param in inspect.signature(command).parameters.values():
        kind = hints.get(param.name, param.annotation)
        if not (isinstance(kind, type) and dataclasses.is_dataclass(kind)):
            parameters.append(param.replace(kind=param.KEYWORD_ONLY, annotation=kind))
            continue
        field_hints = get_type_hints(kind, include_extras=True)
        fields = dataclasses.fields(kind)
        groups[param.name] = (kind, [f.name for f in fields])
        parameters.extend(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default,
                annotation=field_hints[f.name],
            )
            for f in fields
        )
    names = [p.name for p in parameters]
    if len(set(names)) != len(names):
        raise TypeError(f"{command.__name__}: option groups repeat an option: {names}")

    @functools.wraps(command)
    def expanded(**kwargs: Any) -> Any:
        for name, (kind, fields) in groups.items():
            kwargs[name] = kind(**{f: kwargs.pop(f) for f in fields})
        return command(**kwargs)

    expanded.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    expanded.__annotations__ = {p.name: p.annotation for p in parameters}
    return expanded  # type: ignore[return-value]
