"""What every worker checks of a request's SamplingParams before its engine sees them."""

from __future__ import annotations

from hyperllama.worker.v1 import worker_pb2

from hyperllama_common.errors import InvalidRequest

MAX_TOP_LOGPROBS = 20  # OpenAI's bound, and the engines' default ceiling


def check_logprobs(params: worker_pb2.SamplingParams) -> None:
    """top_logprobs within 0-20, and only with logprobs asked for."""
    if not 0 <= params.top_logprobs <= MAX_TOP_LOGPROBS:
        raise InvalidRequest(
            f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, not {params.top_logprobs}",
            param="top_logprobs",
        )
    if params.top_logprobs and not params.logprobs:
        raise InvalidRequest("top_logprobs needs logprobs to be asked for", param="top_logprobs")
