"""One GGUF model: loading, its description, chat templating and tokenization."""

from __future__ import annotations

import ctypes
import logging
import time

import llama_cpp
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common import chat_tools, gotemplate
from hyperllama_common.errors import ContextLengthExceeded, InvalidRequest
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from hyperllama_worker_llamacpp.model_info import describe
from hyperllama_worker_llamacpp.registry import ModelSpec

log = logging.getLogger(__name__)

ROLES = {"system", "user", "assistant", "tool"}
# ChatML, for models whose GGUF carries no chat template.
_FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class LoadedModel:
    """Weights, vocabulary and metadata. Generation contexts are made by the batch engine, the
    embedding context by the embedder (on first use)."""

    def __init__(self, spec: ModelSpec, n_ctx: int, threads: int):
        self.spec = spec
        self.n_ctx = n_ctx  # the context each sequence may use
        started = time.perf_counter()
        # This Llama holds the weights and the tokenizer; its own context is kept tiny because the
        # batch engine decodes in a context of its own.
        self.llm = Llama(model_path=str(spec.path), n_ctx=64, n_batch=64, n_threads=threads, verbose=False)
        self.vocab = self.llm._model.vocab
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self._texts: dict[int, bytes] = {}  # token_text's, filled as logprobs ask (decode thread only)
        metadata = self.llm.metadata
        self.info = describe(
            spec.name,
            spec.path,
            metadata,
            llama_cpp.llama_model_n_params(self.llm.model),
            n_ctx,
            digest=spec.digest,
        )
        self.info.context_length = int(metadata.get(f"{self.info.family}.context_length", n_ctx))
        # A TEMPLATE from the store is Ollama's Go-template syntax and wins over the GGUF's own.
        self._go_template = gotemplate.parse(spec.go_template) if spec.go_template else None
        template = metadata.get("tokenizer.chat_template") or _FALLBACK_TEMPLATE
        self.knows_tools = (
            chat_tools.knows_tools(spec.go_template, go=True)
            if self._go_template is not None
            else chat_tools.knows_tools(template)
        )
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=self.llm._model.token_get_text(self.llm.token_eos()),
            bos_token=self.llm._model.token_get_text(self.llm.token_bos()),
        )
        self.load_seconds = time.perf_counter() - started
        log.info("loaded %s from %s in %.2fs", spec.name, spec.path, self.load_seconds)

    @property
    def kv_bytes_per_token(self) -> int:
        """What one token's K and V take in the cache (f16), over every layer."""
        m = self.llm.model
        head_dim = llama_cpp.llama_model_n_embd(m) // max(1, llama_cpp.llama_model_n_head(m))
        return 2 * 2 * llama_cpp.llama_model_n_layer(m) * llama_cpp.llama_model_n_head_kv(m) * head_dim

    def render_chat(self, conversation: worker_pb2.ChatConversation) -> str:
        """The conversation as the model's template writes it; tools through the template when it
        renders them, else in the generic format (chat_tools)."""
        for m in conversation.messages:
            if m.role not in ROLES:
                raise InvalidRequest(
                    f"unknown role '{m.role}'; expected one of {sorted(ROLES)}", param="messages"
                )
        tools = chat_tools.tool_list(conversation) if self.knows_tools else []
        chat = chat_tools.structured(conversation) if self.knows_tools else chat_tools.plain(conversation)
        if self.spec.system and not any(m["role"] == "system" for m in chat):
            chat.insert(0, {"role": "system", "content": self.spec.system})  # as Ollama does
        if self._go_template is not None:
            return gotemplate.render_chat(self._go_template, chat, tools=tools)
        return self._formatter(messages=chat, tools=tools or None).prompt  # type: ignore[arg-type]

    def prompt_tokens(self, req: worker_pb2.GenerateRequest) -> list[int]:
        """The request's prompt as tokens (chat rendered with the model's template; token ids as they
        are), checked to fit."""
        if req.HasField("tokens"):
            tokens = self.check_token_ids(req.tokens.ids, "prompt")
        else:
            prompt = self.render_chat(req.chat) if req.HasField("chat") else req.prompt
            # After an earlier exchange's tokens the prompt goes on from them: no second BOS.
            tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=not req.context, special=True)
        if req.context:
            tokens = self.check_token_ids(req.context, "context") + tokens
        ctx = self.context_for(req)
        if len(tokens) >= ctx:
            raise ContextLengthExceeded(
                f"the prompt is {len(tokens)} tokens but the context holds {ctx}; "
                "shorten the prompt or raise num_ctx",
                param="messages" if req.HasField("chat") else "prompt",
            )
        return tokens

    def text_tokens(self, text: str) -> list[int]:
        """Generated text as tokens (no BOS; special tokens' text stays text)."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) if text else []

    def context_for(self, req: worker_pb2.GenerateRequest) -> int:
        """The request's context: its num_ctx (Ollama's option) up to the sequence's; a larger one is
        refused, never cut silently."""
        if req.num_ctx > self.n_ctx:
            raise InvalidRequest(
                f"num_ctx {req.num_ctx} is more than the {self.n_ctx} tokens this worker gives a sequence "
                "(HYPERLLAMA_WORKER_NUM_CTX)",
                param="options.num_ctx",
            )
        return req.num_ctx if req.num_ctx > 0 else self.n_ctx

    def is_end_of_generation(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def check_token_ids(self, ids: list[int], param: str) -> list[int]:
        """``ids`` as a list, refused if any is outside the vocabulary: llama.cpp would read past its
        embedding table."""
        out = list(ids)
        bad = next((t for t in out if not 0 <= t < self.n_vocab), None)
        if bad is not None:
            raise InvalidRequest(
                f"token id {bad} is not in the model's vocabulary (ids 0-{self.n_vocab - 1})", param=param
            )
        return out

    def piece(self, token: int) -> bytes:
        return self.llm.detokenize([token])

    def token_text(self, token: int) -> bytes:
        """A token's own bytes as logprobs show it: special tokens by their text (``<|im_end|>``),
        which the stream itself leaves out."""
        text = self._texts.get(token)
        if text is None:
            buf = ctypes.create_string_buffer(64)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
            if n < 0:  # the buffer was too small: -n is what it takes
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
            text = self._texts[token] = buf.raw[: max(n, 0)]
        return text
