"""Several generations answering one request (OpenAI's ``n``, a list of prompts), each as its own
choice.

Every choice is a generation of its own through the scheduler (its own queue entry, slot and seed);
they share the prompt's cache on the worker that holds it. The choices are started and read at
once: a choice that holds a slot is always being read, so choices waiting for slots that other
choices of the same request hold always get them (more choices than free slots never deadlock).
One choice goes the direct way: no task and no queue per token.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import Request

from hyperllama_gateway.dispatch import Event
from hyperllama_gateway.generation import Generation, Result, until_disconnect

ChoiceEvents = AsyncIterator[tuple[int, Event]]
# Put on the queue by a choice's task when its stream has ended.
_DONE = object()


async def collect_all(http: Request, gens: list[Generation]) -> list[Result]:
    """Every choice's result; the first error (before any byte is sent) ends them all."""
    if len(gens) == 1:
        await gens[0].start()
        return [await gens[0].collect()]

    async def run(gen: Generation) -> Result:
        await gen.begin()
        return await gen.gathered()

    tasks = [asyncio.ensure_future(run(g)) for g in gens]
    try:
        return list(await until_disconnect(http, asyncio.gather(*tasks)))
    except BaseException:
        await _stop(tasks, gens)
        raise


async def stream_all(http: Request, gens: list[Generation]) -> ChoiceEvents:
    """Every choice's events, tagged with its index, in the order they arrive. Returns once the
    first event is in (an error before it is raised here, so the response still gets a real status);
    an error in any choice later ends them all and is raised by the iterator."""
    if len(gens) == 1:
        await gens[0].start()
        return _one(gens[0])
    queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()

    async def pump(index: int, gen: Generation) -> None:
        try:
            await gen.begin()
            async for event in gen.events():
                await queue.put((index, event))
            await queue.put((index, _DONE))
        except asyncio.CancelledError:
            raise
        except BaseException as err:  # noqa: BLE001 - handed to the reader, which raises it
            await queue.put((index, err))

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(gens)]
    try:
        first = await until_disconnect(http, queue.get())
        if isinstance(first[1], BaseException):
            raise first[1]
    except BaseException:
        await _stop(tasks, gens)
        raise
    return _merged(first, queue, tasks, gens)


async def _one(gen: Generation) -> ChoiceEvents:
    async for event in gen.events():
        yield 0, event


async def _merged(
    first: tuple[int, object], queue: asyncio.Queue[tuple[int, object]], tasks: list[asyncio.Task[None]],
    gens: list[Generation],
) -> ChoiceEvents:  # fmt: skip
    try:
        running = len(tasks)
        item: tuple[int, object] | None = first
        while running:
            index, event = item if item is not None else await queue.get()
            item = None
            if event is _DONE:
                running -= 1
            elif isinstance(event, BaseException):
                raise event
            else:
                yield index, event  # type: ignore[misc]
    finally:
        await _stop(tasks, gens)


async def _stop(tasks: Sequence[asyncio.Future[Any]], gens: list[Generation]) -> None:
    """End every choice (one failed, or the client left): their slots are given back at once."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for gen in gens:
        await gen.close()
