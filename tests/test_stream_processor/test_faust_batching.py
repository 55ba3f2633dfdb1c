"""How the faust runtime groups what it reads into stored batches (``store_while_reading``)."""

import asyncio

import pytest

from stream_processor.faust_app import store_while_reading


async def reader(chunks, pause_s):
    for chunk in chunks:
        await asyncio.sleep(pause_s)
        yield chunk


def run(chunks, *, pause_s, store_s, size):
    stored: list[list] = []
    in_store = []

    async def store(batch):
        in_store.append(1)
        assert len(in_store) == 1, "two batches stored at once"
        await asyncio.sleep(store_s)
        stored.append(batch)
        in_store.pop()

    async def main():
        await store_while_reading(reader(chunks, pause_s), store, size)
        await asyncio.sleep(0)

    asyncio.run(main())
    return stored


def test_under_load_what_is_read_while_storing_becomes_one_full_batch():
    chunks = [list(range(i, i + 100)) for i in range(0, 3000, 100)]
    stored = run(chunks, pause_s=0.001, store_s=0.05, size=1000)
    assert [e for batch in stored for e in batch][: len(stored[0])] == stored[0]
    events = [e for batch in stored[:-1] for e in batch]
    assert events == list(range(len(events)))  # in order, nothing twice
    assert all(len(b) <= 1000 for b in stored)
    # the first chunk goes at once; then the batches fill while the previous one is stored
    assert len(stored[0]) == 100
    assert max(len(b) for b in stored) == 1000
    assert len(stored) <= 6


def test_at_a_low_rate_each_read_is_stored_at_once():
    chunks = [[i] for i in range(10)]
    stored = run(chunks, pause_s=0.03, store_s=0.005, size=1000)
    assert stored == chunks


def test_the_last_events_are_stored_when_the_reading_ends():
    chunks = [list(range(i, i + 100)) for i in range(0, 500, 100)]
    stored = []

    async def store(batch):
        await asyncio.sleep(0.02)
        stored.append(batch)

    async def main():
        task = asyncio.ensure_future(store_while_reading(reader(chunks, 0.001), store, 1000))
        await asyncio.sleep(0.3)  # the reader has ended; nothing may be left waiting
        assert [e for b in stored for e in b] == list(range(500))
        task.cancel()

    asyncio.run(main())


def test_a_failed_store_stops_the_reading_and_is_raised():
    async def store(batch):
        raise RuntimeError("database gone")

    async def endless():
        i = 0
        while True:
            await asyncio.sleep(0.001)
            yield [i]
            i += 1

    async def main():
        await asyncio.wait_for(store_while_reading(endless(), store, 10), timeout=5)

    with pytest.raises(RuntimeError, match="database gone"):
        asyncio.run(main())


def test_acks_release_each_partitions_events_up_to_the_released_offset_only():
    from types import SimpleNamespace

    from stream_processor.faust_app import Acks

    acked: list[tuple[str, int, int]] = []

    class Stream:
        async def ack(self, event):
            m = event.message
            acked.append((m.topic, m.partition, m.offset))

    def event(topic, partition, offset):
        return SimpleNamespace(message=SimpleNamespace(topic=topic, partition=partition,
                                                       offset=offset))  # fmt: skip

    acks, stream = Acks(), Stream()
    acks.add(stream, [event("t", 0, o) for o in range(5)] + [event("t", 1, o) for o in range(3)])
    acks.add(stream, [event("labels", 0, 7)])
    asyncio.run(acks.release([("t", 0, 2)]))
    assert acked == [("t", 0, 0), ("t", 0, 1), ("t", 0, 2)]
    asyncio.run(acks.release([("t", 1, 0), ("labels", 0, 6), ("t", 0, 2)]))
    assert acked[3:] == [("t", 1, 0)]  # nothing of labels below 7; t-0 up to 2 acked once
    asyncio.run(acks.release([("labels", 0, 7), ("t", 0, 9), ("t", 1, 2)]))
    assert sorted(acked[4:]) == [("labels", 0, 7), ("t", 0, 3), ("t", 0, 4), ("t", 1, 1),
                                 ("t", 1, 2)]  # fmt: skip
