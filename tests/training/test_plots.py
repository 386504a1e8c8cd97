"""The figures live outside the serving layers (``training.plots``; that it imports
without torch is checked in ``tests/model/test_evaluation.py``), and a missing
matplotlib is a clear error naming the extra to install."""

from __future__ import annotations

import sys

import pytest

from polypindex.model.core.errors import ConfigError
from polypindex.training import plots


def test_missing_matplotlib_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes ``import matplotlib`` fail
    with pytest.raises(ConfigError, match=r"pip install 'polypindex\[plots\]'"):
        plots.pyplot()
