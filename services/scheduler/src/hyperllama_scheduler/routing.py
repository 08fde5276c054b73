"""Which workers may serve a request: the capabilities it needs and, if pinned, the engine.

The scheduler never branches on an engine's name; a pin is a plain filter on WorkerInfo.engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from hyperllama.worker.v1 import worker_pb2

_FORMAT_CAPABILITY = {
    worker_pb2.ResponseFormat.KIND_JSON_OBJECT: "json_object",
    worker_pb2.ResponseFormat.KIND_JSON_SCHEMA: "json_schema",
}


@dataclass(frozen=True)
class Requirements:
    capabilities: tuple[str, ...]
    engine: str = ""

    def accepts(self, worker: worker_pb2.WorkerInfo) -> bool:
        if self.engine and worker.engine != self.engine:
            return False
        return all(c in worker.capabilities for c in self.capabilities)

    def missing(self, workers: list[worker_pb2.WorkerInfo]) -> str:
        """The first needed capability that none of ``workers`` has."""
        for capability in self.capabilities:
            if not any(capability in w.capabilities for w in workers):
                return capability
        return ", ".join(self.capabilities)


def for_generate(req: worker_pb2.GenerateRequest, engine: str = "") -> Requirements:
    needed = ["generate"]
    if req.HasField("chat"):
        needed.append("chat")
    if req.response_format.kind in _FORMAT_CAPABILITY:
        needed.append(_FORMAT_CAPABILITY[req.response_format.kind])
    if req.HasField("tokens"):
        needed.append("token_prompt")
    if req.sampling.logprobs:
        needed.append("logprobs")
    if req.sampling.logit_bias:
        needed.append("logit_bias")
    if req.context:
        needed.append("context")
    return Requirements(tuple(needed), engine)


def for_embed(engine: str = "") -> Requirements:
    return Requirements(("embed",), engine)
