"""Redis with a password: a real redis-server with requirepass and an ACL user, and a real scheduler that
reaches it with the credentials in its URL (redis://user:password@host/db) and serves; without them (or
with a wrong password) the scheduler stops at once with a message that says so, and never logs the
password."""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as redis
from conftest import SchedulerHarness
from hyperllama_cli.cluster import LocalCluster, free_port, redis_server_binary
from hyperllama_common.redis_access import redact_url
from test_scheduler import request

ADMIN_PASSWORD = secrets.token_urlsafe(16)
ALICE_PASSWORD = secrets.token_urlsafe(16)


@pytest.fixture(scope="module")
def secured_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of a redis-server that requires a password (default user) and knows the ACL user alice."""
    port = free_port()
    data = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", str(data), "--requirepass", ADMIN_PASSWORD,
         "--user", "alice", "on", f">{ALICE_PASSWORD}", "~*", "&*", "+@all"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize(
    "userinfo", [f":{ADMIN_PASSWORD}", f"alice:{ALICE_PASSWORD}"], ids=["requirepass", "acl-user"]
)
async def test_the_scheduler_serves_with_the_credentials_in_its_url(
    secured_redis: str, userinfo: str, tmp_path: Path
) -> None:
    url = f"redis://{userinfo}@{secured_redis}/3"
    client = redis.Redis.from_url(url)
    await client.flushdb()
    cluster = LocalCluster(log_dir=tmp_path, redis_url=url)
    cluster.start_scheduler(worker_lease_seconds="2")
    harness = SchedulerHarness(cluster)
    try:
        harness.add_worker("w1")
        await harness.wait_workers(1)
        # The registry, the queue and the grants (pub/sub) all go through the authenticated connection.
        text, _, _ = await harness.generate(request(max_tokens=3))
        assert text == "w1 t0 t1"
        assert await client.keys("*")
    finally:
        await harness.dispatch.close()
        await harness.scheduler.close()
        await harness.channel.close()
        cluster.stop()
        await client.flushdb()
        await client.aclose()
    logs = "".join(p.read_text() for p in tmp_path.glob("*.log"))
    assert userinfo.split(":")[1] not in logs


@pytest.mark.parametrize(
    "userinfo",
    ["", f"alice:{secrets.token_urlsafe(16)}", f":{ALICE_PASSWORD}"],
    ids=["no-password", "wrong-password", "another-users-password"],
)
def test_the_scheduler_stops_with_a_clear_error_when_redis_refuses_it(
    secured_redis: str, userinfo: str, tmp_path: Path
) -> None:
    url = f"redis://{userinfo}{'@' if userinfo else ''}{secured_redis}/3"
    cluster = LocalCluster(log_dir=tmp_path, redis_url=url)
    try:
        with pytest.raises(RuntimeError, match="exited with 1") as err:
            cluster.start_scheduler()
    finally:
        cluster.stop()
    log = (tmp_path / "scheduler.log").read_text()
    assert f"Redis at {redact_url(url)} refused the credentials" in log, log
    assert "HYPERLLAMA_SCHEDULER_REDIS_URL" in log
    if userinfo:
        assert userinfo.split(":")[1] not in log and userinfo.split(":")[1] not in str(err.value)
    assert "Traceback" not in log
