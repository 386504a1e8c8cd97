"""Fixtures of the viewer tests: the tiny indexed world (helpers/viewer.py), an in-process
client and a live server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from helpers.service_api import started
from helpers.viewer import ViewerWorld, build_world, live_server


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> ViewerWorld:
    return build_world(tmp_path_factory.mktemp("viewer") / "home")


@pytest.fixture(scope="module")
def client(world: ViewerWorld) -> Iterator[TestClient]:
    with started(world.settings, world.encoder) as c:
        yield c


@pytest.fixture(scope="module")
def live(world: ViewerWorld) -> Iterator[str]:
    with live_server(world.settings, world.encoder) as url:
        yield url
