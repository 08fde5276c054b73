"""Every Redis key and channel the scheduler uses, in one place.

Worker ids and model names in keys come from workers' registrations (or were resolved against them),
never from a client's request.
"""

PREFIX = "hl"


# Sorted set of request ids waiting for a slot; score orders by priority band, then each request's
# fair-share start tag (queue.py), which is arrival order within one tenant.
def queue(model: str) -> str:
    return f"{PREFIX}:queue:{model}"


# Sorted set of the same ids scored by admission time (unix ms): the oldest wait, at a glance.
def queue_since(model: str) -> str:
    return f"{PREFIX}:queue:{model}:since"


# What a waiting request needs of a worker (JSON: capabilities, engine, prompt prefix hashes), so
# that any replica's dispatch pass can place it. Lives until the request is granted or ends.
def request(request_id: str) -> str:
    return f"{PREFIX}:req:{request_id}"


# Renewed by whichever replica holds the request's Acquire call; the value names that call, so a
# stale call's clean-up cannot remove a request a newer call (the caller's retry) now waits for.
# Its lapse means the caller is gone.
def request_lease(request_id: str) -> str:
    return f"{PREFIX}:req:{request_id}:lease"


# The slot lease granted to a request (JSON), kept until released or lapsed, so a caller whose
# replica died before it could deliver the grant receives it from another replica.
def grant(request_id: str) -> str:
    return f"{PREFIX}:req:{request_id}:grant"


# Slot leases on a worker for a model: sorted set of lease ids scored by expiry (unix ms).
def leases(worker_id: str, model: str) -> str:
    return f"{PREFIX}:leases:{worker_id}:{model}"


# Prompt-prefix block hashes recently sent to a worker for a model, scored by when (unix ms).
def prefixes(worker_id: str, model: str) -> str:
    return f"{PREFIX}:prefixes:{worker_id}:{model}"


# How long a model's streams run (EWMA, ms): the queue's wait estimate.
def model_stats(model: str) -> str:
    return f"{PREFIX}:stats:{model}"


# Fair share of a model's priority band (0 highest .. 9) across tenants (hash): "v", the band's virtual
# time, and "t:<tenant>", each tenant's finish tag. Tenant names are the gateway's configuration, so
# the fields are bounded; the state is dropped whenever nobody waits in the band, and lapses no
# sooner than the requests that wait in it.
def fair_share(model: str, band: int) -> str:
    return f"{PREFIX}:fair:{model}:{band}"


# Sorted set of worker ids scored by lease expiry (unix ms).
WORKERS = f"{PREFIX}:workers"


# A worker's last heartbeat (WorkerInfo protobuf bytes), expiring with its lease.
def worker(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}"


# Set when a call to the worker broke, or it said its engine is not ready: no new work until its
# next heartbeat (which deletes it).
def worker_suspect(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}:suspect"


# Set when the worker answered busy: its own count of slots is the truth until its next heartbeat.
def worker_full(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}:full"


# Published when a slot is granted to a queued request (message: the request id), so the replica
# that holds the request's Acquire call hands it over at once.
GRANTS_CHANNEL = f"{PREFIX}:grants"


# Set while one replica loads a model somewhere (value: the worker id), so that no other replica
# starts a second load of it at the same time; lapses if that replica dies mid-load.
def loading(model: str) -> str:
    return f"{PREFIX}:loading:{model}"


# Why the last load of a model failed, for a while: requests waiting for it fail with this at once
# rather than at their deadline.
def load_error(model: str) -> str:
    return f"{PREFIX}:loaderror:{model}"


# Set while a model is being unloaded from a worker: no slot of it may be granted there meanwhile.
def unloading(worker_id: str, model: str) -> str:
    return f"{PREFIX}:unloading:{worker_id}:{model}"


# When each loaded copy's keep_alive runs out: sorted set of JSON [worker id, model] scored by the
# time (unix ms). A copy kept forever, or whose streams run past its expiry, has no entry.
EXPIRIES = f"{PREFIX}:expiries"

# Each loaded copy's keep_alive (ms, -1 = forever), set by the last request granted a slot of it (or
# an explicit load or unload), applied when its streams end: hash of the same members. Entries go
# with their copy; those of workers gone are pruned by the sweep.
KEEP_ALIVES = f"{PREFIX}:keepalive"


# When each model on a worker last served (unix ms): sorted set of model names, for eviction.
def last_used(worker_id: str) -> str:
    return f"{PREFIX}:used:{worker_id}"
