"""Fixtures of the service API tests: the store and index of known vectors
(:func:`helpers.service_api.build_setup`) and a client of an app serving them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from helpers.service_api import MeanColourEncoder, Setup, build_setup, started


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return build_setup(tmp_path_factory.mktemp("service"))


@pytest.fixture(scope="module")
def client(setup: Setup) -> Iterator[TestClient]:
    with started(setup.settings, MeanColourEncoder()) as c:
        yield c
