"""Every Redis key the scheduler uses, in one place."""

PREFIX = "hl"


# Sorted set of request ids waiting for a slot; score orders by priority, then arrival.
def queue(model: str) -> str:
    return f"{PREFIX}:queue:{model}"


# The admitted request (protobuf bytes); lives until the request ends or its deadline passes.
def request(request_id: str) -> str:
    return f"{PREFIX}:req:{request_id}"


# Renewed by the scheduler coroutine that waits for the request; its lapse means the caller is gone.
def request_lease(request_id: str) -> str:
    return f"{PREFIX}:req:{request_id}:lease"


# Set when a dispatch pass takes the request, so a lease renewal racing the take cannot put it back
# (a renewal re-admits a request whose entry is gone only because Redis lost it).
def request_taken(request_id: str) -> str:
    return f"{PREFIX}:req:{request_id}:taken"


# Monotonic arrival counter.
ARRIVAL_SEQ = f"{PREFIX}:seq"

# Sorted set of worker ids scored by lease expiry (unix ms).
WORKERS = f"{PREFIX}:workers"


# A worker's last heartbeat (WorkerInfo protobuf bytes), expiring with its lease.
def worker(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}"
