"""Fixtures shared by every test tier."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hyperllama_cli.cluster import LocalCluster


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def redis_url(logs_dir: Path) -> Iterator[str]:
    """A real redis-server on a free port, or the one HYPERLLAMA_REDIS_URL names."""
    if os.environ.get("HYPERLLAMA_REDIS_URL"):
        yield os.environ["HYPERLLAMA_REDIS_URL"]
        return
    cluster = LocalCluster(log_dir=logs_dir)
    cluster.start_redis()
    yield cluster.redis_url
    cluster.stop()
