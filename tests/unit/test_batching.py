"""The batch planner of the llama.cpp worker: join, finish, cancel, chunked prefill, slot accounting,
prefix reuse. No model is needed: the planner decides what each decode step feeds."""

from hyperllama_worker_llamacpp.batching import COPY_MIN_GAIN, BatchPlanner, Sequence, common_prefix
from hypothesis import given
from hypothesis import strategies as st


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
    assert [st.seq for st in seated] == [a, b]
    assert p.in_use == 2 and list(p.waiting) == [c]
    p.finish(a)
    assert p.in_use == 1
    assert [st.seq for st in p.admit()] == [c]
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
    assert [st.seq for st in p.admit()] == [b]


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
    ((seat,),) = [p.admit()]
    assert seat.seq.slot == 0 and seat.kept == 4 and again.reused == 4 and seat.copy_from is None
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
    (seat,) = p.admit()
    assert seat.kept == 2
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
    [seat] = p.admit()
    assert seat.seq is empty and seat.kept == 0
    assert p.slots[0].cached == []  # kept == 0: the engine drops the slot's cells from position 0
    assert empty.pending == [] and p.plan() == []


SYSTEM_X = list(range(1000, 1100))  # two tenants' long system prompts
SYSTEM_Y = list(range(2000, 2100))


def run_once(p: BatchPlanner, s: Sequence) -> None:
    """Seat ``s``, prefill it and let it finish: its slot keeps the prompt cached."""
    p.submit(s)
    p.admit()
    while s.pending and s.prefilling:
        step(p)
    p.finish(s)


def test_a_prefix_held_by_a_busy_slot_is_copied_rather_than_prefilled_again():
    """A tenant's second request in flight copies the prompt from the first one's slot, into the slot
    whose cache is worth least (here the empty one), and another tenant's cached prompt survives."""
    p = BatchPlanner(n_slots=3, n_batch=512)
    run_once(p, seq(SYSTEM_Y + [1]))  # slot 0 holds Y
    first = seq(SYSTEM_X + [1])
    p.submit(first)
    p.admit()
    step(p)  # X's first request runs in slot 1
    assert first.slot == 1 and not first.prefilling
    second = seq(SYSTEM_X + [2])
    p.submit(second)
    (seat,) = p.admit()
    assert seat.copy_from == 1 and seat.kept == len(SYSTEM_X) and second.slot == 2
    assert p.slots[2].cached == SYSTEM_X and p.slots[0].cached[: len(SYSTEM_Y)] == SYSTEM_Y
    assert [f.pos for f in p.plan() if f.seq is second] == [len(SYSTEM_X)]


def test_a_free_slot_holding_the_prefix_is_taken_without_a_copy():
    p = BatchPlanner(n_slots=2, n_batch=512)
    run_once(p, seq(SYSTEM_X + [1]))
    again = seq(SYSTEM_X + [2])
    p.submit(again)
    (seat,) = p.admit()
    assert seat.copy_from is None and again.slot == 0 and seat.kept == len(SYSTEM_X)


def test_a_miss_gives_up_a_duplicated_cache_before_a_unique_one():
    p = BatchPlanner(n_slots=3, n_batch=512)
    run_once(p, seq(SYSTEM_Y + [1]))  # slot 0: Y, the only copy
    a, b = seq(SYSTEM_X + [1]), seq(SYSTEM_X + [2])
    for s in (a, b):
        p.submit(s)
    p.admit()
    step(p)
    p.finish(a)
    p.finish(b)  # slots 1 and 2 both hold X
    z = seq(list(range(3000, 3050)))
    p.submit(z)
    (seat,) = p.admit()
    assert z.slot in (1, 2) and seat.copy_from is None
    assert p.slots[0].cached[: len(SYSTEM_Y)] == SYSTEM_Y  # Y survives the miss


def test_among_equally_worthless_caches_the_least_recently_used_slot_goes():
    p = BatchPlanner(n_slots=2, n_batch=512)
    run_once(p, seq([5, 1]))  # slot 0
    run_once(p, seq([6, 1]))  # slot 1 (the empty one): now both hold two tokens nobody else has
    other = seq([7, 7])
    p.submit(other)
    p.admit()
    assert other.slot == 0  # seated longer ago than slot 1


def test_a_short_shared_prefix_is_not_worth_a_copy():
    p = BatchPlanner(n_slots=2, n_batch=512)
    short = list(range(10, 10 + COPY_MIN_GAIN - 2))
    busy = seq(short + [1])
    p.submit(busy)
    p.admit()
    step(p)
    other = seq(short + [2])
    p.submit(other)
    (seat,) = p.admit()
    assert seat.copy_from is None and seat.kept == 0


def test_several_requests_copy_one_prefix_in_one_admission():
    p = BatchPlanner(n_slots=3, n_batch=512)
    first = seq(SYSTEM_X + [1])
    p.submit(first)
    p.admit()
    step(p)
    second, third = seq(SYSTEM_X + [2]), seq(SYSTEM_X + [3])
    p.submit(second)
    p.submit(third)
    seats = p.admit()
    assert [s.copy_from for s in seats] == [first.slot, first.slot]


@given(st.lists(st.integers(0, 3), max_size=200), st.lists(st.integers(0, 3), max_size=200))
def test_common_prefix_matches_an_element_by_element_count(a, b):
    expected = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        expected += 1
    assert common_prefix(a, b) == expected == common_prefix(b, a)
    assert common_prefix(a, a + b) == len(a)


def test_a_slot_given_up_is_parked_and_its_prompt_comes_back_from_the_cache():
    p = BatchPlanner(n_slots=1, n_batch=512, cache_tokens=1000)
    run_once(p, seq(SYSTEM_X + [1]))
    y = seq(SYSTEM_Y + [1])
    p.submit(y)
    (seat,) = p.admit()
    assert seat.park is not None and seat.kept == 0  # X's cells are kept before Y takes the slot
    assert [e.cached for e in p.parked] == [SYSTEM_X + [1]]
    while y.prefilling:
        step(p)
    p.finish(y)
    again = seq(SYSTEM_X + [2])
    p.submit(again)
    (seat,) = p.admit()
    assert seat.restore == p.parked[0].key and seat.kept == len(SYSTEM_X)
    assert seat.park is not None  # Y, in turn, goes to the cache
    assert p.slots[0].cached == SYSTEM_X
    assert [f.pos for f in p.plan()] == [len(SYSTEM_X)]


def test_the_prompt_cache_drops_least_recently_used_prompts_to_stay_in_budget():
    p = BatchPlanner(n_slots=1, n_batch=512, cache_tokens=250)
    prompts = [list(range(base, base + 101)) for base in (10_000, 20_000, 30_000, 40_000)]
    for prompt in prompts:
        run_once(p, seq(prompt))
    # Three prompts were given up; 250 tokens hold two of them: the oldest went.
    assert [e.cached for e in p.parked] == prompts[1:3]
    assert sum(len(e.cached) for e in p.parked) <= 250


def test_a_prompt_larger_than_the_cache_or_a_cache_of_zero_parks_nothing():
    for budget in (0, 50):
        p = BatchPlanner(n_slots=1, n_batch=512, cache_tokens=budget)
        run_once(p, seq(SYSTEM_X + [1]))
        p.submit(seq(SYSTEM_Y + [1]))
        (seat,) = p.admit()
        assert seat.park is None and p.parked == []


def test_a_grown_conversation_replaces_its_shorter_parked_self():
    p = BatchPlanner(n_slots=1, n_batch=512, cache_tokens=10_000)
    run_once(p, seq(SYSTEM_X + [1]))
    run_once(p, seq(SYSTEM_Y))  # parks X
    turn_two = SYSTEM_X + [1] + list(range(5000, 5100))
    run_once(p, seq(turn_two))  # restores X, parks Y
    p.submit(seq([7] * 80))
    (seat,) = p.admit()  # parks turn two, which extends the parked X: X goes
    assert sorted(len(e.cached) for e in p.parked) == [len(SYSTEM_Y), len(turn_two)]
    assert len(seat.drop) == 1


def test_the_parked_prompt_being_restored_is_never_dropped_to_make_room():
    p = BatchPlanner(n_slots=1, n_batch=512, cache_tokens=101)
    run_once(p, seq(SYSTEM_X + [1]))
    run_once(p, seq(SYSTEM_Y + [1]))  # parks X (101 tokens: the whole budget)
    back = seq(SYSTEM_X + [2])
    p.submit(back)
    (seat,) = p.admit()
    # Y cannot be parked without dropping X, which is being copied in: Y is let go instead.
    assert seat.restore is not None and seat.park is None and seat.drop == ()
    assert [e.cached for e in p.parked] == [SYSTEM_X + [1]]


def test_the_same_short_prompt_reuses_its_slot_even_after_a_long_answer():
    """The slot that holds the prompt wins over an empty one, however long the answer it also holds:
    what a cache saves now outweighs what it might save later (and the cache parks the rest)."""
    p = BatchPlanner(n_slots=2, n_batch=512, cache_tokens=10_000)
    prompt = [5, 6, 7, 8, 9]
    first = seq(prompt, limit=200)
    p.submit(first)
    p.admit()
    for i in range(150):
        step(p, {first.slot: 10_000 + i})
    slot = first.slot
    p.finish(first)
    again = seq(prompt)
    p.submit(again)
    (seat,) = p.admit()
    assert again.slot == slot and seat.kept == len(prompt) - 1 and seat.copy_from is None
    assert seat.park is not None  # the long answer is kept for a follow-up turn
