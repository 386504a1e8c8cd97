"""The ``polypindex`` command line.

Each command parses its options and calls one library function; heavy imports
(torch, the web stack) happen inside commands, so ``polypindex --help`` is instant and
serving never imports torch. Modules: :mod:`~polypindex.cli.app` (the root app,
``--version``, :func:`main`), :mod:`~polypindex.cli.boundary` (errors → exit codes),
:mod:`~polypindex.cli.options` (shared options, locations from ``POLYPINDEX_*``), and
one module per command family (``data``, ``train``, ``store``, ``probe``, ``bench``,
``serve``).
"""

from polypindex.cli.app import app, main

__all__ = ["app", "main"]
