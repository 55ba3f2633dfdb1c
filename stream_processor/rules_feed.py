"""The rules topic: the live fraud rules, changed at runtime, the same in every processor.

A rule set travels whole, as one message (key ``rules``), so a change is atomic: a processor
never scores with half of one file and half of another. A rule set's version is its message's
offset on the topic: numbered by the broker, so two analysts publishing at once never get the
same number. The value is JSON::

    {"rules": [{"id": ..., "description": ..., "expression": ..., "action": ..., "severity": ...,
                "enabled": ...}, ...],
     "source": "my_rules.yml", "published_at": "2026-12-07T09:30:00Z"}

The topic is kept whole, not compacted: compaction keeps a key's newest message, which may be
one the processors refuse, and would drop the rule sets that stored events name by version.
Rule sets are few and small.

Every processor reads the topic whole, outside its consumer group (each one needs every rule
set), in a thread of its own (:class:`RulesFeed`): a new rule set is checked and compiled there,
and the next batch is scored with it. A message that is not a valid rule set is dead-lettered
(the ``dead_letters`` table and the DLQ topic, with the reason) and the rules live before it
stay: a bad message never stops a processor. A processor that finds no rule set on the topic
publishes the rules it was started with (``RULES_FILE``), marked ``initial``: such a set counts
only when no rule set precedes it, so one applied meanwhile always wins.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource

from fraudstream.schema import InvalidRecord
from fraudstream.settings import Settings
from fraudstream.text_safety import hidden_character
from stream_processor.contracts import RawMessage, dead_letter
from stream_processor.rules import RuleError, RuleSet, changes, rules_of

log = logging.getLogger(__name__)

KEY = b"rules"
POLL_S = 0.1
"""How long the feed's thread waits for a message before looking whether it should stop."""


class RulesTopicError(RuntimeError):
    """The rules topic cannot be read or written (it is missing, or the broker is away)."""


def encode(ruleset: RuleSet, *, initial: bool = False) -> bytes:
    """The message of ``ruleset`` (every rule, the disabled ones too). ``initial``: published by
    a processor that found no rule set, to count only if none precedes it on the topic."""
    document = {"rules": [r.as_dict() for r in ruleset.rules], "source": ruleset.source,
                "published_at": ruleset.published_at}  # fmt: skip
    if initial:
        document["initial"] = True
    return json.dumps(document, ensure_ascii=False).encode()


def decode(key: bytes | None, value: bytes | None, version: int) -> RuleSet:
    """The rule set of the message at offset ``version``; :class:`RuleError` for one that is
    not a valid rule set (its rules refused as a file's would be, each with its reason)."""
    return _ruleset(_document(key, value, version), version)


def _where(version: int) -> str:
    return f"rule set version {version}"


def _document(key: bytes | None, value: bytes | None, version: int) -> dict:
    if key != KEY:
        raise RuleError(_where(version), [f"the key must be {KEY.decode()!r}, not {key!r}"])
    if value is None:
        raise RuleError(_where(version), ["no value; to turn every rule off, apply `rules: []`"])
    try:
        document = json.loads(value)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RuleError(_where(version), [f"not JSON: {exc}"]) from None
    if not isinstance(document, dict):
        raise RuleError(_where(version), ["not a JSON object with a `rules` list"])
    return document


def _ruleset(document: dict, version: int) -> RuleSet:
    ruleset = rules_of(document, _where(version))
    meta = {key: document.get(key) for key in ("source", "published_at")}
    for key, value in meta.items():  # shown by `rules list` and in logs: plain text only
        if value is not None and (not isinstance(value, str) or hidden_character(value)):
            raise RuleError(_where(version), [f"{key} must be text without hidden characters"])
    return replace(ruleset, version=version, source=meta["source"] or "",
                   published_at=meta["published_at"])  # fmt: skip


def publish(
    settings: Settings, ruleset: RuleSet, *, initial: bool = False, timeout_s: float = 30.0
) -> RuleSet:
    """Publish ``ruleset`` (its rules already checked) on the rules topic: it, with its version
    and the time it was published."""
    if hidden := hidden_character(ruleset.source):
        raise RuleError(repr(ruleset.source), [f"the file name holds {hidden}"])
    published = replace(ruleset, published_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    delivered: list = []
    # Not idempotent: such a producer waits for an id first (half a second on the embedded
    # broker), and a duplicate of a rule set after a retry is the same rules again.
    producer = Producer({**settings.kafka_config(), "linger.ms": 0,
                         "message.timeout.ms": int(timeout_s * 1000)})  # fmt: skip
    producer.produce(settings.rules_topic, key=KEY, value=encode(published, initial=initial),
                     on_delivery=lambda err, msg: delivered.append((err, msg)))  # fmt: skip
    producer.flush(timeout_s)
    if not delivered or delivered[0][0] is not None:
        reason = delivered[0][0] if delivered else f"no answer within {timeout_s:.0f} s"
        raise RulesTopicError(f"cannot publish on topic {settings.rules_topic!r}: {reason}")
    return replace(published, version=delivered[0][1].offset())


@dataclass(frozen=True)
class Applied:
    live: RuleSet
    """The rule set live now: the one published, or the live one it equals."""
    published: bool
    """False: the live rule set held the same rules already."""
    changes: list[str]
    """What changed, one line a rule."""


def apply(settings: Settings, ruleset: RuleSet) -> Applied:
    """Publish ``ruleset`` unless the live rule set holds the same rules."""
    before = read_rules(settings).live
    changed = changes(before, ruleset)
    if before is not None and not changed:
        return Applied(before, False, [])
    return Applied(publish(settings, ruleset), True, changed)


class RulesTopic:
    """The rules topic read from its start: the newest valid rule set (:attr:`live`), every one
    applied in order (:attr:`applied`, with ``history``), and the messages refused, as dead
    letters (:attr:`refused`)."""

    def __init__(self, settings: Settings, *, history: bool = False):
        self.topic = settings.rules_topic
        self.live: RuleSet | None = None
        self.applied: list[RuleSet] | None = [] if history else None
        self.refused: deque[dict] = deque()  # appended by one thread, taken by another
        # assigned, not subscribed: librdkafka still wants a group id, which commits nothing
        self._consumer = Consumer({**settings.kafka_config(), "enable.auto.commit": False,
                                   "group.id": f"{settings.consumer_group}-rules",
                                   "fetch.wait.max.ms": 20})  # fmt: skip
        try:
            meta = self._consumer.list_topics(self.topic, timeout=10).topics[self.topic]
            if meta.error is not None:
                raise KafkaException(meta.error)
        except KafkaException as exc:
            self._consumer.close()
            raise RulesTopicError(f"cannot read topic {self.topic!r}: {exc}") from None
        if len(meta.partitions) != 1:  # versions are offsets: one partition orders them all
            self._consumer.close()
            raise RulesTopicError(f"topic {self.topic!r} has {len(meta.partitions)} partitions; "
                                  "the rules topic must have one")  # fmt: skip
        self._partitions = [TopicPartition(self.topic, p) for p in meta.partitions]
        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING)
                               for p in meta.partitions])  # fmt: skip

    def catch_up(self, timeout_s: float = 30.0) -> None:
        """Read up to the end offsets the broker gives now; :class:`RulesTopicError` if that
        takes longer than ``timeout_s``. (The embedded broker's end offset is the start of its
        last record batch: exact for rule sets, which :func:`publish` sends one a batch.)"""
        try:
            marks = [self._consumer.get_watermark_offsets(tp, timeout=10)
                     for tp in self._partitions]  # fmt: skip
            deadline = time.monotonic() + timeout_s
            while True:
                positions = self._consumer.position(self._partitions)  # before a read: invalid
                if all(high <= max(low, tp.offset)
                       for tp, (low, high) in zip(positions, marks, strict=True)):  # fmt: skip
                    return
                if time.monotonic() > deadline:
                    raise RulesTopicError(
                        f"could not read topic {self.topic!r} to its end within {timeout_s:.0f} s"
                    )
                self.read(0.2)
        except KafkaException as exc:
            raise RulesTopicError(f"cannot read topic {self.topic!r}: {exc}") from None

    def read(self, timeout_s: float) -> None:
        """Read what has arrived, waiting up to ``timeout_s`` for a first message (``consume``
        would wait that long for a batch to fill)."""
        first = self._consumer.poll(timeout_s)
        msgs = [] if first is None else [first, *self._consumer.consume(100, timeout=0)]
        for msg in msgs:
            err = msg.error()
            if err is None:
                self._take(msg)
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("rules topic %r: %s", self.topic, err)

    def _take(self, msg) -> None:
        version = msg.offset()
        try:
            document = _document(msg.key(), msg.value(), version)
            if document.get("initial") is True and self.live is not None:
                return  # a processor's start-up rules: a rule set was there before them
            self.live = _ruleset(document, version)
        except RuleError as exc:
            raw = RawMessage(msg.value(), msg.key(), msg.topic(), msg.partition(), version, None)
            self.refused.append(dead_letter(raw, InvalidRecord("rules", str(exc))))
            log.warning("refused %s; the rules live before it stay", exc)
            return
        if self.applied is not None:
            self.applied.append(self.live)

    def close(self) -> None:
        self._consumer.close()


def read_rules(settings: Settings) -> RulesTopic:
    """The rules topic read to its end, with every rule set applied (closed: nothing more is
    read)."""
    topic = RulesTopic(settings, history=True)
    try:
        topic.catch_up()
    finally:
        topic.close()
    return topic


def _warn_unless_kept(settings: Settings) -> None:
    """Log a warning when the rules topic deletes or compacts what it holds (a topic this tool
    did not create): the live rule set would go, and a restarted processor would publish its
    RULES_FILE again."""
    admin = AdminClient(settings.kafka_config())
    resource = ConfigResource("topic", settings.rules_topic)
    try:
        config = admin.describe_configs([resource])[resource].result(timeout=10)
    except Exception as exc:  # noqa: BLE001 - only a check: the rules work without it
        log.debug("cannot read the rules topic's configuration: %s", exc)
        return
    values = {name: entry.value for name, entry in config.items()}
    if values.get("retention.ms", "-1") != "-1" or "compact" in values.get("cleanup.policy", ""):
        log.warning(
            "topic %r has retention.ms=%s, cleanup.policy=%s: the live rule set will be deleted "
            "or compacted away; set retention.ms=-1 and cleanup.policy=delete (docs/rules.md)",
            settings.rules_topic, values.get("retention.ms"), values.get("cleanup.policy"),
        )  # fmt: skip


class RulesFeed:
    """The live rules of a processor (:attr:`current`), followed on the rules topic in a thread:
    read whole at start (publishing ``initial`` when the topic holds no rule set), then every
    new rule set as it comes."""

    def __init__(self, settings: Settings, initial: RuleSet):
        self._topic = RulesTopic(settings)
        try:
            self._topic.catch_up()
            if self._topic.live is None:  # the first processor: the topic says what is live
                version = publish(settings, initial, initial=True).version
                log.info("rules topic empty: published %r as version %d", initial.source, version)
                self._topic.catch_up()  # read back: a set applied meanwhile, before it, wins
                if self._topic.live is None:
                    raise RulesTopicError(f"published rules version {version} on "
                                          f"{settings.rules_topic!r} but read back none")  # fmt: skip
        except Exception:
            self._topic.close()
            raise
        _warn_unless_kept(settings)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="rules-feed", daemon=True)
        self._thread.start()
        self._log_applied(self.current)

    @property
    def current(self) -> RuleSet:
        """The newest valid rule set (replaced whole by the feed's thread)."""
        return self._topic.live

    def take_refused(self) -> list[dict]:
        """The dead letters of the messages refused since the last call."""
        refused = self._topic.refused
        return [refused.popleft() for _ in range(len(refused))]

    def _follow(self) -> None:
        while not self._stop.is_set():
            before = self._topic.live
            try:
                self._topic.read(POLL_S)
            except Exception:  # noqa: BLE001 - the rules live stay; the broker may come back
                log.exception("reading the rules topic failed; retrying")
                self._stop.wait(1.0)
            if self._topic.live is not before:
                self._log_applied(self._topic.live)

    @staticmethod
    def _log_applied(ruleset: RuleSet) -> None:
        log.info("rules version %d live (from %r): %d rules, %d enabled", ruleset.version,
                 ruleset.source, len(ruleset.rules), len(ruleset.enabled))  # fmt: skip

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        if self._thread.is_alive():  # its consumer is still in use: left to the process's exit
            log.warning("the rules feed's thread did not stop within 5 s")
            return
        self._topic.close()
