"""Where the scheduler replicas are: one address setting names one replica or several.

``HYPERLLAMA_*_SCHEDULER_ADDRESS`` takes any of
  ``host:port``                   one replica;
  ``host:port,host:port,...``     several (``make run SCHEDULERS=2``), names resolved once at start;
  ``dns:///name:port``            every address a DNS name resolves to (compose replicas, a K8s
                                  headless Service), resolved again when a connection fails.
Calls are spread round robin over the replicas that answer, so a dead replica is skipped as soon as
its connection fails; a call it was serving fails with UNAVAILABLE and the caller retries elsewhere.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import grpc

from hyperllama_common.grpc_server import MESSAGE_SIZE_OPTIONS
from hyperllama_common.internal_auth import InternalAuth

BALANCED_OPTIONS: list[tuple[str, Any]] = [
    *MESSAGE_SIZE_OPTIONS,
    ("grpc.lb_policy_name", "round_robin"),
    # Reconnect to a restarted replica within a second, not gRPC's default of up to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def _ipv4(host_port: str) -> str:
    host, _, port = host_port.strip().rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"not host:port: {host_port!r}")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        host = str(socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
    return f"{host}:{port}"


def grpc_target(addresses: str) -> str:
    """The gRPC target for an address setting (see the module doc)."""
    addresses = addresses.strip()
    if "," not in addresses:
        return addresses
    return "ipv4:" + ",".join(_ipv4(a) for a in addresses.split(",") if a.strip())


def scheduler_channel(
    addresses: str,
    interceptors: list[grpc.aio.ClientInterceptor] | None = None,
    auth: InternalAuth | None = None,
) -> grpc.aio.Channel:
    """One channel to all the scheduler replicas named by ``addresses``; every call on it carries the
    internal token (and speaks mTLS) as the environment says, unless ``auth`` is given."""
    auth = InternalAuth.from_env() if auth is None else auth
    options = BALANCED_OPTIONS
    if "," in addresses and auth.tls is not None:
        # A list's authority is the list itself, which no certificate names: TLS checks the first
        # replica's host instead (every replica's certificate names it on one machine; elsewhere
        # HYPERLLAMA_TLS_SERVER_NAME overrides both).
        options = [*options, ("grpc.default_authority", addresses.split(",")[0].strip())]
    return auth.channel(grpc_target(addresses), options, interceptors or ())
