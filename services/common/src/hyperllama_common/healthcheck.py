"""Container health probe for the gRPC services: exit 0 when the standard health service says SERVING.

python -m hyperllama_common.healthcheck 127.0.0.1:50051

The health service needs no internal token, but with mTLS configured (HYPERLLAMA_TLS_*) the probe
connects with the service's own certificate.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hyperllama_common.internal_auth import InternalAuth


def serving(address: str, timeout: float = 3.0, quiet: bool = True, auth: InternalAuth | None = None) -> bool:
    """Whether the gRPC server at ``address`` answers SERVING on the standard health service."""
    auth = InternalAuth.from_env() if auth is None else auth
    with auth.sync_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError as err:
            if not quiet:
                print(f"{address}: {err.code().name}", file=sys.stderr)
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def main() -> int:
    address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
    return 0 if serving(address, quiet=False) else 1


if __name__ == "__main__":
    sys.exit(main())
