"""The batch planner of the llama.cpp worker: join, finish, cancel, chunked prefill, slot accounting,
prefix reuse. No model is needed: the planner decides what each decode step feeds."""

from hyperllama_worker_llamacpp.batching import BatchPlanner, Sequence


def seq(prompt, limit=10) -> Sequence:
    return Sequence(prompt=list(prompt), limit=limit)


def step(planner: BatchPlanner, sample: dict[int, int] | None = None):
    """Plan a step, pretend to decode it, and sample ``sample[slot]`` (default 99) where asked."""
    feeds = planner.plan()
    planner.fed(feeds)
    for f in feeds:
        if f.logits:
            planner.sampled(f.seq, (sample or {}).get(f.seq.slot, 99))
    return feeds


def test_sequences_join_free_slots_in_order_and_wait_when_full():
    p = BatchPlanner(n_slots=2, n_batch=64)
    a, b, c = seq([1, 2]), seq([3]), seq([4])
    for s in (a, b, c):
        p.submit(s)
    seated = p.admit()
    assert [s for s, _ in seated] == [a, b]
    assert p.in_use == 2 and list(p.waiting) == [c]
    p.finish(a)
    assert p.in_use == 1
    assert [s for s, _ in p.admit()] == [c]
    assert c.slot == 0  # the slot a left


def test_one_step_advances_every_running_sequence():
    p = BatchPlanner(n_slots=3, n_batch=64)
    seqs = [seq([10 * i + 1, 10 * i + 2]) for i in range(3)]
    for s in seqs:
        p.submit(s)
    p.admit()
    prefill = step(p)
    assert len(prefill) == 6 and sum(f.logits for f in prefill) == 3
    decode = p.plan()
    assert [(f.seq, f.token, f.pos, f.logits) for f in decode] == [(s, 99, 2, True) for s in seqs]


def test_long_prompt_is_prefilled_in_chunks_while_others_generate():
    p = BatchPlanner(n_slots=2, n_batch=8)
    short, long = seq([1]), seq(range(100, 120))
    p.submit(short)
    p.admit()
    step(p)  # short has its first token now
    p.submit(long)
    p.admit()
    feeds = step(p)
    # The generating sequence goes first (1 token), the long prompt takes the remaining 7.
    assert [f.seq for f in feeds].count(short) == 1 and feeds[0].seq is short
    assert [f.token for f in feeds if f.seq is long] == list(range(100, 107))
    assert not any(f.logits for f in feeds if f.seq is long)
    feeds = step(p)
    assert [f.pos for f in feeds if f.seq is long] == list(range(7, 14))
    feeds = step(p)
    long_feeds = [f for f in feeds if f.seq is long]
    assert [f.token for f in long_feeds] == list(range(114, 120))
    assert long_feeds[-1].logits and long.produced == 1  # the prompt is done: it samples


def test_cancelled_waiting_sequence_never_takes_a_slot():
    p = BatchPlanner(n_slots=1, n_batch=8)
    a = seq([1])
    a.cancelled = True
    b = seq([2])
    p.submit(a)
    p.submit(b)
    assert [s for s, _ in p.admit()] == [b]


def test_finish_frees_the_slot_and_keeps_its_tokens_for_reuse():
    p = BatchPlanner(n_slots=2, n_batch=64)
    system = [7, 7, 7, 7]
    first = seq(system + [1, 2])
    p.submit(first)
    p.admit()
    step(p, {0: 50})
    step(p, {0: 51})
    p.finish(first)
    assert p.in_use == 0
    assert p.slots[0].cached == system + [1, 2, 50]  # the last sampled token was never fed
    other = seq([9, 9])
    p.submit(other)
    p.admit()
    assert other.slot == 1  # no shared prefix with slot 0, so the empty slot is used
    again = seq(system + [3])
    p.submit(again)
    ((s, kept),) = p.admit()
    assert s.slot == 0 and kept == 4 and s.reused == 4
    assert [(f.token, f.pos) for f in p.plan() if f.seq is again] == [(3, 4)]


def test_identical_prompt_still_decodes_its_last_token():
    p = BatchPlanner(n_slots=1, n_batch=64)
    first = seq([5, 6, 7])
    p.submit(first)
    p.admit()
    step(p)
    p.finish(first)
    again = seq([5, 6, 7])
    p.submit(again)
    ((_, kept),) = p.admit()
    assert kept == 2
    assert [(f.token, f.pos, f.logits) for f in p.plan()] == [(7, 2, True)]


def test_an_empty_prompt_keeps_the_slot_cache_and_plans_nothing():
    """An empty prompt (the engine refuses them; this is the planner's own guard) must not cut the
    slot's cache with a negative position, and leaves nothing to feed, which the engine turns into an
    error rather than an idle loop."""
    p = BatchPlanner(n_slots=1, n_batch=8)
    first = seq([1, 2, 3])
    p.submit(first)
    p.admit()
    step(p)
    p.finish(first)
    empty = seq([])
    p.submit(empty)
    [(seated, kept)] = p.admit()
    assert seated is empty and kept == 0
    assert p.slots[0].cached == []  # kept == 0: the engine drops the slot's cells from position 0
    assert empty.pending == [] and p.plan() == []
