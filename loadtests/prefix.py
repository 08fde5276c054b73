"""The shared-prefix mix: tenants that each send their own long system prompt with a short user turn.

Every tenant's system prompt is seeded random sentences, so two tenants share no prefix beyond the
chat template's (and now and then a first word). A worker that still holds a tenant's prompt in a
slot's KV cache prefills only the user turn; one that does not prefills the whole prompt. Where the
scheduler sends a request decides which of the two happens, which is what this mix measures.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from hyperllama_cli.loadgen import Messages, RequestResult

WORDS = (
    "account address answer apple area army art baby back ball bank base basket bath bed bell bird "
    "boat body bone book border bottle box brain branch bread brick bridge brother brush bucket "
    "building butter button cake camera card carpet cart cat chain chair chalk cheese chest child "
    "church circle city clock cloud coat collar comb copper cord cotton country cow crowd cup curtain "
    "cushion desk dinner door drain drawer dress drop ear earth egg engine eye face farm feather "
    "field finger fire fish flag floor flower fly foot fork fowl frame garden girl glove goat gold "
    "grain grass gun hair hammer hand harbor hat head heart hill horse hospital house island jewel "
    "kettle key king kitchen knee knife knot lamp leaf leg library line lip lock map market meal "
    "milk monkey moon morning mountain mouth nail neck needle nerve net night nose nut office orange "
    "oven owner page pan paper parcel pen pencil picture pig pin pipe plane plate plough pocket pot "
    "potato prison pump rail rat receipt ring river road rod roof root sail school scissors screw "
    "seed sheep shelf ship shirt shoe skin skirt snake sock spade sponge spoon spring square stamp "
    "star station stem stick stocking stomach store street sun table tail thread throat thumb ticket "
    "toe tongue tooth town train tray tree trousers umbrella valley village wall watch wheel whip "
    "whistle window wing wire worm yard"
).split()
VERBS = "keeps watches counts mends carries paints sells guards sorts cleans builds finds".split()


def words_to_tokens(text: str) -> int:
    """A rough count: about four characters per token for plain English."""
    return max(1, len(text) // 4)


@dataclass(frozen=True)
class Tenant:
    name: str
    system: str
    system_tokens: int

    def conversation(self, turn: int) -> Messages:
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": f"Question {turn}: name one thing from the list."},
        ]


def make_tenants(
    n: int, target_tokens: int, seed: int, count_tokens: Callable[[str], int] = words_to_tokens
) -> list[Tenant]:
    """``n`` tenants with distinct system prompts of about ``target_tokens`` tokens, the same for a seed."""
    rng = random.Random(seed)
    tenants = []
    for i in range(n):
        sentences: list[str] = []
        text = ""
        while count_tokens(text) < target_tokens:
            w = rng.sample(WORDS, 5)
            verb = rng.choice(VERBS)
            sentences.append(
                f"{w[0].capitalize()} {verb} the {w[1]}, the {w[2]} and the {w[3]} by the {w[4]}."
            )
            text = " ".join(sentences)
        tenants.append(Tenant(f"tenant-{i:02d}", text, count_tokens(text)))
    return tenants


def warmup_plan(tenants: list[Tenant]) -> list[Messages]:
    """Every tenant once, so each prompt has been seen by some worker before the measured pass."""
    return [t.conversation(0) for t in tenants]


def measured_plan(tenants: list[Tenant], per_tenant: int, seed: int) -> tuple[list[Tenant], list[Messages]]:
    """``per_tenant`` requests for each tenant in a seeded random order: whose they are, and the chats."""
    order = [t for t in tenants for _ in range(per_tenant)]
    random.Random(seed).shuffle(order)
    return order, [t.conversation(1 + i) for i, t in enumerate(order)]


def cache_hit_fraction(
    owners: list[Tenant], results: list[RequestResult], cover: float = 0.9
) -> float | None:
    """Of the requests that finished, the fraction whose cached prompt tokens cover at least ``cover`` of
    their tenant's system prompt; None when the server reports no cached tokens."""
    reported = [(t, r) for t, r in zip(owners, results, strict=True) if r.ok and r.cached_tokens >= 0]
    if not reported:
        return None
    hits = sum(1 for t, r in reported if r.cached_tokens >= cover * t.system_tokens)
    return round(hits / len(reported), 3)
