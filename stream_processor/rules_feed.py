"""The rules topic: the live fraud rules, changed at runtime, the same in every processor.

A rule set travels whole, as one message (key ``rules``), so a change is atomic: the compacted
topic keeps the newest, and a processor never scores with half of one file and half of another.
A rule set's version is its message's offset on the topic: numbered by the broker, so two
analysts publishing at once never get the same number. The value is JSON::

    {"rules": [{"id": ..., "description": ..., "expression": ..., "action": ..., "severity": ...,
                "enabled": ...}, ...],
     "source": "my_rules.yml", "published_at": "2026-12-07T09:30:00Z"}

Every processor reads the topic whole, outside its consumer group (each one needs every rule
set), in a thread of its own (:class:`RulesFeed`): a new rule set is checked and compiled there,
and the next batch is scored with it. A message that is not a valid rule set is dead-lettered
(the ``dead_letters`` table and the DLQ topic, with the reason) and the rules live before it
stay: a bad message never stops a processor. A processor that finds no rule set on the topic
publishes the rules it was started with (``RULES_FILE``), so the topic always says what is live.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import replace
from datetime import UTC, datetime

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from fraudstream.schema import InvalidRecord
from fraudstream.settings import Settings
from fraudstream.text_safety import hidden_character
from stream_processor.contracts import RawMessage, dead_letter
from stream_processor.rules import RuleError, RuleSet, rules_of

log = logging.getLogger(__name__)

KEY = b"rules"
POLL_S = 0.1
"""How long the feed's thread waits for a message before looking whether it should stop: a
published rule set reaches the next batch within about this plus the broker's fetch wait."""


class RulesTopicError(RuntimeError):
    """The rules topic cannot be read or written (it is missing, or the broker is away)."""


def encode(ruleset: RuleSet, *, initial: bool = False) -> bytes:
    """The message of ``ruleset`` (every rule, the disabled ones too). ``initial``: published by
    a processor that found no rule set, to count only if none precedes it on the topic."""
    published_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    document = {"rules": [r.as_dict() for r in ruleset.rules], "source": ruleset.source,
                "published_at": published_at}  # fmt: skip
    if initial:
        document["initial"] = True
    return json.dumps(document, ensure_ascii=False).encode()


def decode(value: bytes | None, version: int) -> RuleSet:
    """The rule set of the message at offset ``version``; :class:`RuleError` for one that is
    not a valid rule set (the rules refused as a file's would be, each with its reason)."""
    return _ruleset(_document(value, version), version)


def _document(value: bytes | None, version: int) -> dict:
    where = f"rule set version {version}"
    if value is None:
        raise RuleError(
            where, ["no value (a tombstone); to turn every rule off, apply `rules: []`"]
        )
    try:
        document = json.loads(value)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RuleError(where, [f"not JSON: {exc}"]) from None
    if not isinstance(document, dict):
        raise RuleError(where, ["not a JSON object with a `rules` list"])
    return document


def _ruleset(document: dict, version: int) -> RuleSet:
    where = f"rule set version {version}"
    ruleset = rules_of(document, where)
    meta = {key: document.get(key) for key in ("source", "published_at")}
    for key, value in meta.items():  # shown by `rules list` and in logs: plain text only
        if value is not None and (not isinstance(value, str) or hidden_character(value)):
            raise RuleError(where, [f"{key} must be text without hidden characters"])
    return replace(ruleset, version=version, source=meta["source"] or "",
                   published_at=meta["published_at"])  # fmt: skip


def publish(
    settings: Settings, ruleset: RuleSet, *, initial: bool = False, timeout_s: float = 30.0
) -> RuleSet:
    """Publish ``ruleset`` (already checked) on the rules topic; it, with its version."""
    delivered: list = []
    producer = Producer({**settings.kafka_config(), "enable.idempotence": True})
    value = encode(ruleset, initial=initial)
    producer.produce(settings.rules_topic, key=KEY, value=value,
                     on_delivery=lambda err, msg: delivered.append((err, msg)))  # fmt: skip
    producer.flush(timeout_s)
    if not delivered or delivered[0][0] is not None:
        reason = delivered[0][0] if delivered else f"no answer within {timeout_s:.0f} s"
        raise RulesTopicError(f"cannot publish on topic {settings.rules_topic!r}: {reason}")
    return decode(value, delivered[0][1].offset())


class RulesTopic:
    """The rules topic read from its start: the newest valid rule set (:attr:`live`), and the
    messages refused, as dead letters (:attr:`refused`)."""

    def __init__(self, settings: Settings, group: str):
        self.topic = settings.rules_topic
        self.live: RuleSet | None = None
        self.refused: deque[dict] = deque()  # appended by one thread, taken by another
        self._consumer = Consumer({**settings.kafka_config(), "group.id": group,
                                   "enable.auto.commit": False,
                                   "fetch.wait.max.ms": 20})  # fmt: skip
        try:
            meta = self._consumer.list_topics(self.topic, timeout=10).topics[self.topic]
        except KafkaException as exc:
            self._consumer.close()
            raise RulesTopicError(f"cannot read topic {self.topic!r}: {exc}") from None
        if meta.error is not None:
            self._consumer.close()
            raise RulesTopicError(f"cannot read topic {self.topic!r}: {meta.error.str()}")
        self._partitions = [TopicPartition(self.topic, p) for p in meta.partitions]
        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING)
                               for p in meta.partitions])  # fmt: skip

    def catch_up(self, timeout_s: float = 30.0) -> None:
        """Read up to the end offsets the broker gives now."""
        ends = [self._consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in self._partitions]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            positions = self._consumer.position(self._partitions)
            if all(tp.offset >= end for tp, end in zip(positions, ends, strict=True) if end > 0):
                return
            self.read(0.2)

    def read(self, timeout_s: float) -> None:
        """Read what has arrived (waiting up to ``timeout_s`` for it)."""
        for msg in self._consumer.consume(100, timeout=timeout_s):
            if msg.error() is None:
                self._take(msg)

    def _take(self, msg) -> None:
        version = msg.offset()
        try:
            document = _document(msg.value(), version)
            if document.get("initial") is True and self.live is not None:
                return  # a processor's start-up rules: another set was there before them
            self.live = _ruleset(document, version)
        except RuleError as exc:
            raw = RawMessage(msg.value(), msg.key(), msg.topic(), msg.partition(), version, None)
            self.refused.append(dead_letter(raw, InvalidRecord("rules", str(exc))))
            log.warning("refused %s; the rules live before it stay", exc)
            return
        if msg.key() != KEY:  # one key: the compacted topic keeps the newest set only
            log.warning("rule set version %d has key %r, not %r: compaction may drop it",
                        version, msg.key(), KEY)  # fmt: skip

    def close(self) -> None:
        self._consumer.close()


def live_rules(settings: Settings) -> tuple[RuleSet | None, list[dict]]:
    """The rule set live now (None: none was published), and the messages refused."""
    topic = RulesTopic(settings, group=f"{settings.consumer_group}-rules-reader")
    try:
        topic.catch_up()
        return topic.live, list(topic.refused)
    finally:
        topic.close()


class RulesFeed:
    """The live rules of a processor (:attr:`current`), followed on the rules topic in a thread:
    read whole at start (publishing ``initial`` when the topic holds no rule set), then every
    new rule set as it comes."""

    def __init__(self, settings: Settings, initial: RuleSet):
        self._topic = RulesTopic(settings, group=f"{settings.consumer_group}-rules")
        try:
            self._topic.catch_up()
            if self._topic.live is None:  # the first processor: the topic says what is live
                version = publish(settings, initial, initial=True).version
                log.info("rules topic empty: published %r as version %d", initial.source, version)
                # read back: a set applied meanwhile, before it, is the live one
                self._topic.catch_up()
                if self._topic.live is None:
                    raise RulesTopicError(
                        f"published rules version {version} on {settings.rules_topic!r} but "
                        "could not read it back within 30 s"
                    )
        except Exception:
            self._topic.close()
            raise
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
        self._topic.close()
