"""A real nova (nova_server.py, one per test module) as a contract target, reached
over HTTP by openstacksdk as a cloud is."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from nova_cloud import FLAVOR, IMAGE, shared_cloud
from vim_target import Target


def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    cloud = shared_cloud(request)
    # One controller per test: a new driver object is that controller restarted.
    controller_id = f"esc-{uuid.uuid4().hex[:12]}"
    yield Target(
        make=lambda: cloud.driver(controller_id),
        image=IMAGE,
        flavor=FLAVOR,
        put_foreign=cloud.put_foreign,
        foreign_running=cloud.foreign_running,
        tags_of=cloud.tags_of,
    )
    cloud.clean()
