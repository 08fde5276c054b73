"""Internal RPCs are authenticated: a real scheduler and real gRPC workers (the scripted test double)
sharing a token refuse every caller without it, a worker among them, but for the health service; with
mTLS on (a dev CA made by deploy/tls/dev_ca.py) a client without the CA's certificate cannot connect.
The token never shows in any process's log."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from conftest import SUPPORT
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hyperllama.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from hyperllama.worker.v1 import worker_pb2, worker_pb2_grpc
from hyperllama_cli.cluster import LocalCluster
from hyperllama_common.errors import BackendFailed
from hyperllama_common.healthcheck import serving
from hyperllama_common.internal_auth import (
    METADATA_KEY,
    InternalAuth,
    InternalAuthSettings,
    token_interceptors,
)
from hyperllama_common.worker_client import WorkerClients
from hyperllama_gateway.dispatch import Dispatch
from hyperllama_gateway.scheduler_client import SchedulerClient
from test_scheduler import MODEL, request, until

ROOT = Path(__file__).resolve().parents[2]
DEV_CA = ROOT / "deploy" / "tls" / "dev_ca.py"
SCHEDULER = "/hyperllama.scheduler.v1.SchedulerService/"
OFF = InternalAuth()


class Cluster:
    """A scheduler and scripted workers whose processes share ``env`` (the token, the TLS files)."""

    def __init__(self, redis_url: str, logs: Path, env: dict[str, str]):
        self.logs = logs
        self.local = LocalCluster(log_dir=logs, redis_url=redis_url, env=env)
        # DEBUG: the token must stay out of even the most talkative logs.
        self.local.start_scheduler(worker_lease_seconds="2", log_level="DEBUG")
        self.address = self.local.scheduler_address

    def add_worker(self, worker_id: str, **env: str) -> None:
        self.local.start_worker(
            worker_id,
            module="scripted_worker",
            extra_env={"PYTHONPATH": f"{SUPPORT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **env},
        )

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def all_logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs.glob("*.log"))


@pytest.fixture
async def cluster_factory(
    redis_url: str, redis_client, tmp_path: Path
) -> AsyncIterator[Callable[..., Cluster]]:  # type: ignore[no-untyped-def]
    made: list[Cluster] = []

    def make(**env: str) -> Cluster:
        logs = tmp_path / f"logs-{len(made)}"
        logs.mkdir()
        cluster = Cluster(redis_url, logs, env)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.local.stop()


async def list_workers(address: str, auth: InternalAuth) -> list[worker_pb2.WorkerInfo]:
    async with auth.channel(address) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        return list((await stub.ListWorkers(scheduler_pb2.ListWorkersRequest(), timeout=5)).workers)


async def wait_workers(address: str, auth: InternalAuth, ids: set[str]) -> list[worker_pb2.WorkerInfo]:
    async def registered() -> bool:
        return ids <= {w.worker_id for w in await list_workers(address, auth)}

    await until(registered, 30)
    return await list_workers(address, auth)


async def logged(cluster: Cluster, name: str, text: str) -> None:
    async def found() -> bool:
        return text in cluster.log(name)

    await until(found, 30)


async def refused(call: Callable[[grpc.aio.Channel], object], address: str, auth: InternalAuth) -> None:
    async with auth.channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            result = call(channel)
            if hasattr(result, "__aiter__"):
                async for _ in result:  # type: ignore[attr-defined]
                    pass
            else:
                await result  # type: ignore[misc]
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, err.value
    assert "internal token" in (err.value.details() or "")


def scheduler_calls() -> dict[str, Callable[[grpc.aio.Channel], object]]:
    def stub(ch: grpc.aio.Channel) -> scheduler_pb2_grpc.SchedulerServiceStub:
        return scheduler_pb2_grpc.SchedulerServiceStub(ch)

    return {
        "ListModels": lambda ch: stub(ch).ListModels(scheduler_pb2.ListModelsRequest(), timeout=5),
        "ListWorkers": lambda ch: stub(ch).ListWorkers(scheduler_pb2.ListWorkersRequest(), timeout=5),
        "Acquire": lambda ch: stub(ch).Acquire(request(), timeout=5),
        "Heartbeat": lambda ch: scheduler_pb2_grpc.RegistryServiceStub(ch).Heartbeat(
            scheduler_pb2.HeartbeatRequest(
                worker=worker_pb2.WorkerInfo(worker_id="intruder", address="127.0.0.1:1", ready=True)
            ),
            timeout=5,
        ),
    }


def generate_call(ch: grpc.aio.Channel) -> object:
    return worker_pb2_grpc.WorkerServiceStub(ch).Generate(
        worker_pb2.GenerateRequest(request_id=uuid.uuid4().hex, model=MODEL, prompt="hello"), timeout=5
    )


async def generate(address: str, auth: InternalAuth | None = None) -> str:
    """A generation as the gateway runs one: the gateway's own scheduler client and dispatch, whose
    channels read the internal auth settings themselves unless ``auth`` is given here."""
    # The gateway's SchedulerClient takes interceptors, not settings: the token goes in by one.
    interceptors = token_interceptors(auth.token) if auth and auth.token else []
    scheduler = SchedulerClient(address, 3.0, 10.0, interceptors)
    dispatch = Dispatch(scheduler, WorkerClients(auth=auth), max_redispatch=0)
    try:
        events = [e async for e in dispatch.generate(request(max_tokens=3), 20)]
        return "".join(e.text for e in events if isinstance(e, worker_pb2.GenerateChunk))
    finally:
        await dispatch.close()
        await scheduler.close()


def token_env(token: str) -> dict[str, str]:
    return {"HYPERLLAMA_INTERNAL_TOKEN": token}


async def test_a_worker_without_the_token_cannot_register(cluster_factory) -> None:
    token = secrets.token_urlsafe(32)
    cluster = cluster_factory(**token_env(token))
    auth = InternalAuth(token)
    cluster.add_worker("member")
    cluster.add_worker("stranger", HYPERLLAMA_INTERNAL_TOKEN="")
    cluster.add_worker("impostor", HYPERLLAMA_INTERNAL_TOKEN=secrets.token_urlsafe(32))
    await wait_workers(cluster.address, auth, {"member"})
    # Each outsider heard UNAUTHENTICATED for its heartbeats, and the scheduler logged the refusals.
    for outsider in ("stranger", "impostor"):
        await logged(cluster, outsider, "UNAUTHENTICATED")
    assert "refused /hyperllama.scheduler.v1.RegistryService/Heartbeat from ipv4:127.0.0.1:" in cluster.log(
        "scheduler"
    )
    assert {w.worker_id for w in await list_workers(cluster.address, auth)} == {"member"}
    # A heartbeat the scheduler refused wrote nothing: no call gets a stranger's slot.
    assert await generate(cluster.address, auth) == "member t0 t1"


async def test_calls_without_the_right_token_are_refused_but_health(cluster_factory) -> None:
    token = secrets.token_urlsafe(32)
    cluster = cluster_factory(**token_env(token))
    auth = InternalAuth(token)
    cluster.add_worker("w1")
    (worker,) = await wait_workers(cluster.address, auth, {"w1"})

    for caller in (OFF, InternalAuth(secrets.token_urlsafe(32)), InternalAuth(token[:-1])):
        for call in scheduler_calls().values():
            await refused(call, cluster.address, caller)
        await refused(generate_call, worker.address, caller)
    # Straight to the worker with the token: it serves.
    async with auth.channel(worker.address) as channel:
        chunks = [c async for c in generate_call(channel)]  # type: ignore[attr-defined]
    assert "".join(c.text for c in chunks).startswith("w1 t0")

    # The health service needs no token (probes send none).
    for address in (cluster.address, worker.address):
        assert serving(address, auth=OFF)
        async with OFF.channel(address) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

    # The gateway's path with the token: lease from the scheduler, tokens from the worker. With a
    # wrong one the refusal reads as the backend's failure (502), not as the client's bad API key.
    assert await generate(cluster.address, auth) == "w1 t0 t1"
    with pytest.raises(BackendFailed, match="internal token"):
        await generate(cluster.address, InternalAuth(secrets.token_urlsafe(32)))
    assert {w.worker_id for w in await list_workers(cluster.address, auth)} == {"w1"}


async def test_the_token_never_shows_in_the_logs(cluster_factory) -> None:
    token = secrets.token_urlsafe(32)
    wrong = secrets.token_urlsafe(32)
    cluster = cluster_factory(**token_env(token))
    auth = InternalAuth(token)
    cluster.add_worker("w1")
    cluster.add_worker("impostor", HYPERLLAMA_INTERNAL_TOKEN=wrong)
    (worker,) = await wait_workers(cluster.address, auth, {"w1"})
    assert await generate(cluster.address, auth) == "w1 t0 t1"
    await refused(scheduler_calls()["ListModels"], cluster.address, InternalAuth(wrong))
    await refused(generate_call, worker.address, InternalAuth(wrong))
    await logged(cluster, "impostor", "UNAUTHENTICATED")
    logs = cluster.all_logs()
    assert "refused " + SCHEDULER + "ListModels" in logs and "refused /hyperllama.worker.v1" in logs
    assert token not in logs and wrong not in logs
    assert METADATA_KEY not in logs


@pytest.fixture(scope="module")
def dev_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dev CA of `make dev-ca` (the same script), and a second, foreign one."""
    out = tmp_path_factory.mktemp("tls")
    for name in ("ca", "other-ca"):
        done = subprocess.run([sys.executable, str(DEV_CA), str(out / name)], capture_output=True, text=True)
        if done.returncode != 0 and "openssl" in done.stderr:
            pytest.skip(done.stderr)
        assert done.returncode == 0, done.stderr
    return out


def tls_env(ca: Path, cert: str) -> dict[str, str]:
    return {
        "HYPERLLAMA_TLS_CA": str(ca / "ca.crt"),
        "HYPERLLAMA_TLS_CERT": str(ca / f"{cert}.crt"),
        "HYPERLLAMA_TLS_KEY": str(ca / f"{cert}.key"),
    }


async def test_mtls_admits_only_clients_with_a_certificate_from_the_ca(
    cluster_factory, dev_ca: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = secrets.token_urlsafe(32)
    ca = dev_ca / "ca"
    cluster = cluster_factory(**token_env(token), **tls_env(ca, "server"))
    # This process is the gateway now: its factories read the same settings from the environment,
    # with the client-only certificate.
    for key, value in {**token_env(token), **tls_env(ca, "client")}.items():
        monkeypatch.setenv(key, value)
    auth = InternalAuth.from_env()
    assert auth.tls is not None and auth.describe() == "token + mTLS"
    cluster.add_worker("w1")
    (worker,) = await wait_workers(cluster.address, auth, {"w1"})
    assert await generate(cluster.address) == "w1 t0 t1"
    assert serving(cluster.address) and serving(worker.address)

    # The token is still asked for inside TLS.
    no_token = InternalAuth("", auth.tls)
    await refused(scheduler_calls()["ListWorkers"], cluster.address, no_token)

    # No certificate, a foreign CA's certificate, or plaintext: no connection at all, health included.
    foreign = InternalAuthSettings(internal_token=token, **_tls_fields(dev_ca / "other-ca", ca))
    ca_only = grpc.ssl_channel_credentials(root_certificates=(ca / "ca.crt").read_bytes())
    for address in (cluster.address, worker.address):
        for channel in (
            grpc.aio.secure_channel(address, ca_only),
            InternalAuth.from_settings(foreign).channel(address),
            OFF.channel(address),
        ):
            async with channel:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=5
                    )
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
        assert not serving(address, auth=OFF)
    assert token not in cluster.all_logs()


def _tls_fields(own: Path, trusted: Path) -> dict[str, str]:
    """A client whose certificate ``own`` signed, trusting the servers of ``trusted``."""
    return {
        "tls_ca": str(trusted / "ca.crt"),
        "tls_cert": str(own / "client.crt"),
        "tls_key": str(own / "client.key"),
    }
