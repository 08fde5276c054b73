"""The llama.cpp worker's handoff from the decode thread to the event loop: every callback runs, on the
loop's thread, in the order posted, however the wake-ups coalesce; closing runs what is still pending."""

from __future__ import annotations

import asyncio
import os
import threading

from hyperllama_worker_llamacpp.handoff import Handoff


async def test_callbacks_posted_from_another_thread_run_on_the_loop_in_order():
    loop = asyncio.get_running_loop()
    handoff = Handoff(loop)
    ran: list[tuple[int, int]] = []
    done = asyncio.Event()

    def poster() -> None:
        for i in range(1000):  # far more than wake-ups: most posts find one on its way
            handoff.post(lambda i=i: ran.append((i, threading.get_ident())))
        handoff.post(done.set)

    thread = threading.Thread(target=poster)
    thread.start()
    await asyncio.wait_for(done.wait(), 10)
    thread.join()
    assert [i for i, _ in ran] == list(range(1000))
    assert {ident for _, ident in ran} == {threading.get_ident()}
    handoff.close()


async def test_close_from_another_thread_runs_what_is_pending_and_frees_the_pipe():
    loop = asyncio.get_running_loop()
    handoff = Handoff(loop)
    fds = (handoff._read, handoff._write)
    ran: list[str] = []

    def last_words() -> None:
        handoff.post(lambda: ran.append("final chunk"))
        handoff.close()

    await asyncio.to_thread(last_words)
    for _ in range(100):
        if ran:
            break
        await asyncio.sleep(0.01)
    assert ran == ["final chunk"]
    for fd in fds:
        try:
            os.fstat(fd)
        except OSError:
            continue
        raise AssertionError(f"fd {fd} is still open")


async def test_a_failing_callback_does_not_hold_back_the_ones_after_it():
    handoff = Handoff(asyncio.get_running_loop())
    done = asyncio.Event()

    def broken() -> None:
        raise RuntimeError("a listener broke")

    handoff.post(broken)
    handoff.post(done.set)  # in the same wake-up as the failing one
    await asyncio.wait_for(done.wait(), 10)
    handoff.close()
