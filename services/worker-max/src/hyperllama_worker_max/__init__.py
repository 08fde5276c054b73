"""HyperLlama worker for the Modular MAX engine."""

import os

# Set before gRPC is imported. The worker starts its engine child (fork, then exec) while gRPC's threads
# run, which happens whenever a model loads; gRPC's fork handlers then abort the child ("Check failed:
# next_worker->state == KICKED"). The child only execs the engine, so it needs none of them.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
