"""polypindex.model.data.config: the one parser of ``--set key=value`` overrides."""

from __future__ import annotations

import pytest

from polypindex.model.core.errors import ConfigError
from polypindex.model.data.config import parse_overrides


def test_parse_overrides_json_values_and_errors() -> None:
    got = parse_overrides(
        ["epochs=3", " lr =1e-4", "name=demo", "flag=true", "sizes=[1, 2]", "p=a=b"]
    )
    assert got == {
        "epochs": 3,
        "lr": 1e-4,
        "name": "demo",
        "flag": True,
        "sizes": [1, 2],
        "p": "a=b",
    }
    for bad in ("epochs", "=3"):
        with pytest.raises(ConfigError, match="must look like key=value"):
            parse_overrides([bad])
