"""Log-probabilities of generated tokens, read from the logits of the step that sampled them.

They are the log-softmax of the model's logits plus the request's logit_bias, before penalties,
temperature and top-k/top-p/min-p: the model's own distribution (what OpenAI reports, whatever the
temperature), with the bias counted because it changes what the model can say. So greedy's pick
(without repetition penalties) is always the top entry, and a +100 bias makes its token's logprob ~0.

Only requests that ask pay for them: a meter exists only then, and costs one pass over the vocabulary
per token (about 50k floats for the default model), plus a partial sort for top_logprobs.
"""

from __future__ import annotations

import llama_cpp
import numpy as np
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.sampling_checks import check_logprobs
from hyperllama_common.textstream import HeldWithText

from hyperllama_worker_llamacpp.model import LoadedModel

# The top alternatives are looked for among the tokens this close to the best logit first: a partial
# sort of those few instead of the whole vocabulary (a third of the cost); all of them if too few are.
TOP_WINDOW = 20.0


class LogprobMeter:
    """One request's logprob entries, each held until its token's text is sent; made only when it
    asks (``meter_for``)."""

    def __init__(self, model: LoadedModel, params: worker_pb2.SamplingParams):
        self.model = model
        self.held: HeldWithText[worker_pb2.TokenLogprob] = HeldWithText()
        self.top = min(params.top_logprobs, model.n_vocab)
        n = model.n_vocab
        self._n = n
        self._work = np.empty(n, dtype=np.float32)
        bias = sorted(params.logit_bias.items())
        self._bias_ids = np.array([t for t, _ in bias], dtype=np.int64)
        self._bias = np.array([b for _, b in bias], dtype=np.float32)

    def hold(
        self, ctx: llama_cpp.llama_context_p, index: int, token: int, piece: bytes, decoded: str
    ) -> None:
        """Add ``token``'s entry; ``piece`` is its bytes, ``decoded`` the characters they completed.
        A token whose bytes end inside a character is done once the next character is out."""
        self.held.add(self.entry(ctx, index, token), len(decoded), int(bool(piece) and not decoded))

    def entry(self, ctx: llama_cpp.llama_context_p, index: int, token: int) -> worker_pb2.TokenLogprob:
        """The entry for ``token``, sampled from the logits at batch position ``index``."""
        raw = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, index), shape=(self._n,))
        logits = self._work
        np.copyto(logits, raw)
        if len(self._bias_ids):
            logits[self._bias_ids] += self._bias
        peak = float(logits.max())
        shifted = np.subtract(logits, peak, out=logits)
        # log-sum-exp, summed in float64: 50k float32 terms lose digits otherwise
        log_total = float(np.log(np.exp(shifted).sum(dtype=np.float64)))
        text = self.model.token_text(token)
        out = worker_pb2.TokenLogprob(
            token=text.decode("utf-8", "replace"),
            logprob=float(shifted[token]) - log_total,
            bytes=text,
        )
        if self.top:
            near = np.flatnonzero(shifted >= -TOP_WINDOW)
            if len(near) < self.top:
                near = np.arange(self._n)
            best = near[np.argpartition(shifted[near], -self.top)[-self.top :]]
            best = best[np.argsort(-shifted[best], kind="stable")]
            for t in best.tolist():
                piece = self.model.token_text(t)
                out.top_logprobs.add(
                    token=piece.decode("utf-8", "replace"),
                    logprob=float(shifted[t]) - log_total,
                    bytes=piece,
                )
        return out


def meter_for(model: LoadedModel, params: worker_pb2.SamplingParams) -> LogprobMeter | None:
    check_logprobs(params)
    return LogprobMeter(model, params) if params.logprobs else None
