"""The commit protocol with fakes at every step, no broker and no database.

A :class:`World` outlives the processor: the topic's log and committed offsets, the database, the
alerts and dead-letter topics. A processor (the protocol over fake pipeline, outbox and offsets)
is killed at a chosen step of a chosen batch, a new one starts from the committed offsets, and
at the end every event is stored once, every alert and dead letter delivered at least once,
every delivery recorded; no offset was ever committed past an event that was not.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest

from stream_processor.commit import CommitProtocol, ProtocolStopped, last_positions
from stream_processor.core import RawMessage
from stream_processor.outbox import Outbound

TOPIC = "transactions"
PARTITIONS = 2
EVENTS = 120
BATCH = 5


class Killed(BaseException):
    """The processor died here (SIGKILL): nothing after this step happens."""


def flagged(event: int) -> bool:
    return event % 4 == 0


def bad(event: int) -> bool:
    return event % 7 == 3


@dataclass
class World:
    log: dict[int, list[int]] = field(default_factory=dict)  # partition -> event ids
    committed: dict[int, int] = field(default_factory=dict)  # partition -> next offset
    rows: dict[int, bool] = field(default_factory=dict)  # stored: event -> flagged
    dead_letters: set[tuple[int, int]] = field(default_factory=set)  # stored (partition, offset)
    marks: set[int] = field(default_factory=set)  # alert_published_at is set
    alerts: list[int] = field(default_factory=list)  # delivered to the alerts topic
    dlq: list[tuple[int, int]] = field(default_factory=list)  # delivered to the DLQ
    consumed: list[int] = field(default_factory=list)  # every event each time it is consumed
    steps: list[str] = field(default_factory=list)  # what happened, in order

    @classmethod
    def with_events(cls, n: int = EVENTS) -> World:
        world = cls()
        for event in range(n):
            world.log.setdefault(event % PARTITIONS, []).append(event)
        world.committed = dict.fromkeys(world.log, 0)
        return world

    def check_committed(self) -> None:
        """Every event below a committed offset is stored, delivered and recorded."""
        for partition, end in self.committed.items():
            for offset, event in enumerate(self.log[partition][:end]):
                if bad(event):
                    assert (partition, offset) in self.dead_letters, event
                    assert (partition, offset) in self.dlq, event
                    continue
                assert event in self.rows, f"offset committed past unstored event {event}"
                if flagged(event):
                    assert event in self.alerts, f"offset committed past undelivered {event}"
                    assert event in self.marks, f"offset committed past unrecorded {event}"


@dataclass
class Kill:
    """Kill the processor at the ``nth`` time it reaches ``step``."""

    step: str | None = None
    nth: int = 1
    seen: int = 0

    def at(self, step: str, world: World) -> None:
        world.steps.append(step)
        if step == self.step:
            self.seen += 1
            if self.seen == self.nth:
                self.step = None  # once: the next incarnation runs to the end
                raise Killed(step)


@dataclass
class Result:
    rows: list[int]
    alerts: list[int]
    dead_letters: list[tuple[int, int]]
    duplicates: list[int]


class FakePipeline:
    """BatchPipeline's contract: stored ids are duplicates; a duplicate whose alert delivery was
    not recorded is alerted again; a write commits when collected."""

    def __init__(self, world: World, kill: Kill):
        self.world, self.kill = world, kill
        self.writing: tuple[Result, dict] | None = None

    def score(self, messages):
        self.kill.at("score", self.world)
        in_flight = set(self.writing[0].rows) if self.writing else set()
        result = Result([], [], [], [])
        for m in messages:
            event = int(m.value)
            self.world.consumed.append(event)
            if bad(event):
                result.dead_letters.append((m.partition, m.offset))
            elif event in self.world.rows or event in in_flight:
                result.duplicates.append(event)
            else:
                result.rows.append(event)
                if flagged(event):
                    result.alerts.append(event)
        return result

    def idle_work(self):
        return Result([], [], [], [])

    def submit(self, result, published):
        self.kill.at("submit", self.world)
        assert self.writing is None, "one write in flight at a time"
        self.writing = (result, dict(published))

    def collect(self) -> Outbound:
        result, published = self.writing
        self.kill.at("write lost", self.world)  # the transaction never committed
        for event in result.rows:
            self.world.rows.setdefault(event, flagged(event))
        self.world.dead_letters.update(result.dead_letters)
        self.world.marks.update(published)
        self.kill.at("write committed", self.world)  # committed, the processor gone
        self.writing = None
        again = [e for e in result.duplicates if self.world.rows[e] and e not in self.world.marks]
        return Outbound(alerts=[{"transaction_id": e} for e in result.alerts + again],
                        dead_letters=list(result.dead_letters))  # fmt: skip

    def published(self, published):
        self.kill.at("record alone", self.world)
        self.world.marks.update(published)

    def finish(self):
        pass


class FakeDelivery:
    def __init__(self, world: World, kill: Kill, out: Outbound):
        self.world, self.kill, self.out = world, kill, out

    def wait(self):
        self.kill.at("delivery lost", self.world)
        self.world.alerts.extend(int(a["transaction_id"]) for a in self.out.alerts)
        self.world.dlq.extend(self.out.dead_letters)
        self.kill.at("delivered", self.world)


class FakeOutbox:
    def __init__(self, world: World, kill: Kill):
        self.world, self.kill = world, kill

    def produce(self, out: Outbound) -> FakeDelivery:
        self.kill.at("produce", self.world)
        return FakeDelivery(self.world, self.kill, out)


class FakeOffsets:
    def __init__(self, world: World, kill: Kill):
        self.world, self.kill = world, kill

    def commit(self, positions, *, final):
        self.kill.at("commit", self.world)
        for _topic, partition, offset in positions:
            assert offset + 1 > self.world.committed[partition], "offsets never go back"
            self.world.committed[partition] = offset + 1
        self.world.check_committed()


def run(world: World, kill: Kill, batch: int = BATCH, idles: int = 4) -> int:
    """Processors, one after the other, each from the committed offsets, until one consumes
    everything and closes: the number of incarnations."""
    for incarnation in itertools.count(1):
        protocol = CommitProtocol(FakePipeline(world, kill), FakeOutbox(world, kill),
                                  FakeOffsets(world, kill), clock=itertools.count().__next__)  # fmt: skip
        try:
            for messages in batches(world, batch):
                protocol.on_batch(messages, last_positions(messages))
            for _ in range(idles):  # nothing more comes: finish, record, release
                protocol.on_idle()
            protocol.close()
            return incarnation
        except Killed:
            continue


def batches(world: World, size: int):
    """The consumer: from the committed offsets, the partitions interleaved."""
    queues = {
        p: [RawMessage(str(e).encode(), None, TOPIC, p, o) for o, e in enumerate(events)][
            world.committed[p] :
        ]
        for p, events in world.log.items()
    }
    merged = [m for group in itertools.zip_longest(*queues.values()) for m in group if m]
    for i in range(0, len(merged), size):
        yield merged[i : i + size]


def assert_complete(world: World) -> None:
    valid = [e for events in world.log.values() for e in events if not bad(e)]
    assert sorted(world.rows) == sorted(valid)  # nothing lost; a dict holds each once
    assert {e for e in valid if flagged(e)} <= set(world.alerts)  # delivered at least once
    assert {e for e in valid if flagged(e)} <= world.marks  # and recorded
    bad_positions = {(p, o) for p, events in world.log.items()
                     for o, e in enumerate(events) if bad(e)}  # fmt: skip
    assert world.dead_letters == bad_positions and bad_positions <= set(world.dlq)
    assert world.committed == {p: len(events) for p, events in world.log.items()}
    world.check_committed()


STEPS = ["score", "submit", "write lost", "write committed", "produce", "delivery lost",
         "delivered", "commit"]  # fmt: skip


def test_without_a_crash_every_offset_is_committed_once_everything_is_done():
    world = World.with_events()
    assert run(world, Kill()) == 1
    assert_complete(world)
    assert sorted(world.consumed) == list(range(EVENTS))  # nothing consumed twice


@pytest.mark.parametrize("nth", [1, 2, 5, 11])
@pytest.mark.parametrize("step", STEPS)
def test_killed_at_any_step_nothing_is_lost_nothing_stored_twice(step, nth):
    world = World.with_events()
    assert run(world, Kill(step, nth)) == 2  # killed once, then a processor ran to the end
    assert_complete(world)
    # What is consumed again: what was not committed when it died, at most four batches: the
    # one scored, the one being written, the one whose delivery is recorded by that write,
    # and the one whose record was just committed (released at the step after).
    again = len(world.consumed) - EVENTS
    assert 0 <= again <= 4 * BATCH, again


def test_killed_while_recording_deliveries_at_shutdown():
    world = World.with_events(12)
    assert run(world, Kill("record alone", 1), batch=12, idles=0) == 2
    assert_complete(world)


def test_the_steps_overlap_batches_in_the_documented_order():
    """Batch N+1 is scored before batch N's write is collected; batch N-1's delivery is waited
    for before batch N's alerts are produced; every offset after its batch's record."""
    world = World.with_events(8)
    run(world, Kill(), batch=2)
    steps = [s for s in world.steps if s not in ("write lost", "delivery lost")]
    # batches 1..4 (each with a flagged event: 0, 4; ids 0-7 over two partitions)
    first = steps.index("write committed")
    assert steps[:first] == ["score", "submit", "score"]  # 2 scored while 1 is written
    assert steps[first:first + 3] == ["write committed", "produce", "submit"]
    assert steps.count("commit") >= 2


def test_a_failure_stops_the_protocol_without_committing_more():
    world = World.with_events(20)
    pipeline, offsets = FakePipeline(world, Kill()), FakeOffsets(world, Kill())

    class Refusing(FakeOutbox):
        def produce(self, out):
            raise RuntimeError("broker refused")

    protocol = CommitProtocol(pipeline, Refusing(world, Kill()), offsets)
    with pytest.raises(RuntimeError, match="broker refused"):
        for messages in batches(world, 4):
            protocol.on_batch(messages, last_positions(messages))
    assert world.committed == {0: 0, 1: 0}  # the first batch had an alert: never released


def test_after_a_failure_the_protocol_refuses_to_go_on_and_never_skips_the_batch():
    """A step failing with any error (a lost database connection while scoring, say) leaves the
    batch unstored: no later batch may be scored, or its offsets would cover the failed one."""
    world = World.with_events(30)

    class Flaky(FakePipeline):
        calls = 0

        def score(self, messages):
            Flaky.calls += 1
            if Flaky.calls == 3:
                raise ConnectionError("server closed the connection unexpectedly")
            return super().score(messages)

    protocol = CommitProtocol(Flaky(world, Kill()), FakeOutbox(world, Kill()),
                              FakeOffsets(world, Kill()))  # fmt: skip
    chunks = list(batches(world, 4))
    for messages in chunks[:2]:
        protocol.on_batch(messages, last_positions(messages))
    with pytest.raises(ConnectionError):
        protocol.on_batch(chunks[2], last_positions(chunks[2]))
    for call in (lambda: protocol.on_batch(chunks[3], last_positions(chunks[3])),
                 protocol.on_idle, protocol.close):  # fmt: skip
        with pytest.raises(ProtocolStopped, match="server closed the connection"):
            call()
    failed = {(m.partition, m.offset) for m in chunks[2]}
    assert all(offset <= o for p, o in failed for q, offset in world.committed.items() if q == p)
    world.check_committed()
