"""``fraudstream rules backtest``: a rule file evaluated over the stored transactions, by the
features each was scored with, before it is switched on.

Per rule: its hits, their share of the traffic, precision and recall against the labels known
(the ``labels`` table when it holds any, else the ``is_fraud`` the input carried), and how many
of its hits the models flagged too (the forest's score above its threshold, or the supervised
P(fraud) at ``SUPERVISED_FLAG_THRESHOLD``: what the stored rules flagged does not count).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import orjson
from sqlalchemy import create_engine, select

from fraudstream.tables import engine_url, labels, shown_url, transactions
from stream_processor.rules import RuleSet, batch_columns

CHUNK = 50_000  # rows evaluated at a time


class BacktestError(RuntimeError):
    pass


@dataclass
class RuleOutcome:
    hits: int = 0
    labelled_hits: int = 0
    fraud_hits: int = 0
    flagged_hits: int = 0


@dataclass
class Backtest:
    database: str
    rules: RuleSet
    since: str | None
    events: int = 0
    first: str = ""
    last: str = ""
    labelled: int = 0
    frauds: int = 0
    labels_from: str = ""
    outcomes: dict[str, RuleOutcome] = field(default_factory=dict)

    def format(self) -> str:
        span = f"{self.first} .. {self.last}" if self.events else "none"
        out = [
            f"{self.events:,} stored transactions ({span}) in {self.database}; "
            f"{self.labelled:,} labelled ({self.labels_from}), {self.frauds:,} fraud",
            "",
            f"{'rule':<24} {'action':<6} {'hits':>8} {'share':>8} {'precision':>9} "
            f"{'recall':>7} {'models flagged too':>19}",
        ]
        for rule in self.rules.rules:
            o = self.outcomes.get(rule.id)
            if o is None:
                out.append(f"{rule.id:<24} {'off':<6}")
                continue
            share = o.hits / self.events if self.events else 0.0
            precision = f"{o.fraud_hits / o.labelled_hits:.3f}" if o.labelled_hits else "-"
            recall = f"{o.fraud_hits / self.frauds:.3f}" if self.frauds else "-"
            flagged = f"{o.flagged_hits / o.hits:.1%}" if o.hits else "-"
            out.append(
                f"{rule.id:<24} {rule.action:<6} {o.hits:>8,} {share:>8.3%} {precision:>9} "
                f"{recall:>7} {flagged:>19}"
            )
        return "\n".join(out)


def backtest(
    database_url: str, rules: RuleSet, since: str | None = None, supervised_threshold: float = 0.5
) -> Backtest:
    """Evaluate ``rules`` over the transactions stored from ``since`` (a date or time, UTC) on."""
    report = Backtest(shown_url(database_url), rules, since)
    report.outcomes = {rule.id: RuleOutcome() for rule in rules.enabled}
    t = transactions
    query = select(
        t.c.transaction_id, t.c.account_id, t.c.amount, t.c.merchant, t.c.location,
        t.c.timestamp, t.c.score, t.c.threshold, t.c.supervised_score, t.c.is_fraud,
        t.c.features,
    ).order_by(t.c.timestamp)  # fmt: skip
    if since:  # stored as 'YYYY-MM-DD HH:MM:SS': an ISO 'T' would sort after the whole day
        query = query.where(t.c.timestamp >= since.replace("T", " ").removesuffix("Z"))
    engine = create_engine(engine_url(database_url))
    try:
        with engine.connect() as conn:
            known = dict(conn.execute(select(labels.c.transaction_id, labels.c.is_fraud)).all())
            report.labels_from = "the labels table" if known else "is_fraud from the input"
            result = conn.execution_options(stream_results=True, yield_per=CHUNK).execute(query)
            for chunk in result.partitions(CHUNK):
                _evaluate(report, rules, chunk, known, supervised_threshold)
    except Exception as exc:  # noqa: BLE001 - a missing table or an older database
        raise BacktestError(f"{report.database}: cannot read transactions: {exc}") from exc
    finally:
        engine.dispose()
    return report


def _evaluate(
    report: Backtest, rules: RuleSet, rows, known: dict, supervised_threshold: float
) -> None:
    n = len(rows)
    stored = [orjson.loads(r.features) for r in rows]
    fields = {
        "amount": [r.amount for r in rows], "account_id": [r.account_id for r in rows],
        "merchant": [r.merchant for r in rows], "location": [r.location for r in rows],
        "timestamp": [r.timestamp for r in rows], "score": [r.score for r in rows],
        "supervised_score": [
            math.nan if r.supervised_score is None else r.supervised_score for r in rows
        ],
    }  # fmt: skip

    def value_of(name: str):
        if name in fields:
            return fields[name]
        return np.fromiter((f.get(name, 0.0) for f in stored), dtype=np.float64, count=n)

    columns = batch_columns(rules.names, value_of)
    truth = [known.get(r.transaction_id, r.is_fraud) if known else r.is_fraud for r in rows]
    labelled = np.array([v is not None for v in truth])
    fraud = np.array([v == 1 for v in truth])
    flagged = np.array([
        r.score > r.threshold
        or (r.supervised_score is not None and r.supervised_score >= supervised_threshold)
        for r in rows
    ])  # fmt: skip
    report.events += n
    report.first = report.first or rows[0].timestamp
    report.last = rows[-1].timestamp
    report.labelled += int(labelled.sum())
    report.frauds += int(fraud.sum())
    for rule_id, hit in rules.hits(columns, n).items():
        o = report.outcomes[rule_id]
        o.hits += int(hit.sum())
        o.labelled_hits += int((hit & labelled).sum())
        o.fraud_hits += int((hit & fraud).sum())
        o.flagged_hits += int((hit & flagged).sum())
