"""The command line's one error boundary: how a failure becomes a message and an exit code.

=========================  ======  =================================================
what happened              exit    what the user sees (stderr)
=========================  ======  =================================================
success                    0
a project or input error   1       ``error: <message>`` (one line, no traceback)
a usage error              2       click's message (bad option, missing argument...)
Ctrl-C                     130     ``interrupted``
=========================  ======  =================================================

Commands never catch errors themselves: the library raises
:class:`~polypindex.model.core.errors.PolypIndexError` (or ``ValueError`` / ``OSError`` for
bad values and files) and :class:`BoundaryGroup`, the root command, translates them;
usage errors are click's own (they are raised before a command runs, exit code 2).
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from typer.core import TyperGroup

from polypindex.model.core.errors import PolypIndexError

# What a command may fail with in normal use: the project's errors, invalid values
# (``ValueError``, which pydantic's validation errors are too) and unusable files.
EXPECTED_ERRORS: tuple[type[Exception], ...] = (PolypIndexError, ValueError, OSError)
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


@contextmanager
def error_boundary() -> Iterator[None]:
    """Turn an expected failure into ``error: ...`` + exit 1 and Ctrl-C into exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        typer.echo("\ninterrupted", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:
        raise  # the reader went away (``| head``): click exits quietly
    except EXPECTED_ERRORS as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(EXIT_ERROR) from exc


class BoundaryGroup(TyperGroup):
    """The root command group: every sub-command runs inside its ``invoke``, so every
    way of running the app (console script, ``python -m polypindex.cli``, ``CliRunner``)
    gets the same :func:`error_boundary`; click's exit codes and messages for usage
    errors (2) and ``--help`` (0) are left as they are."""

    def invoke(self, ctx: Any) -> Any:  # typer's (vendored) click.Context
        with error_boundary():
            return super().invoke(ctx)
