"""The forest's alert budget: its threshold follows the scores of the feed, not those of its fit."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fraudstream.schema import Transaction
from producer.csv_source import read_transactions
from stream_processor.core import RawMessage, ScoringCore
from stream_processor.scoring import AlertBudget


class Model:
    """What the budget reads of a model: its version and its training scores' threshold."""

    def __init__(self, version: int, threshold: float):
        self.version, self.threshold = version, threshold


def test_the_threshold_is_the_models_own_until_enough_scores_then_the_recent_quantile():
    budget = AlertBudget(0.99, window=1_000, min_scores=100)
    model = Model(1, threshold=0.2)
    rng = np.random.default_rng(1)
    assert budget.threshold(model) == 0.2
    budget.add(rng.uniform(0.4, 0.6, 99))
    assert budget.threshold(model) == 0.2  # 99 scores: not enough
    budget.add(rng.uniform(0.4, 0.6, 1))
    assert 0.59 < budget.threshold(model) < 0.6  # the 0.99 quantile of what it scored


def test_the_newest_scores_count_across_the_rings_end_and_a_batch_larger_than_it():
    budget = AlertBudget(0.5, window=10, min_scores=1)
    model = Model(1, 0.0)
    budget.threshold(model)
    budget.add(np.arange(7.0))  # 0..6
    budget.add(np.arange(100.0, 106.0))  # wraps: the ring holds 3..6 and 100..105
    assert budget.threshold(model) == np.quantile([3, 4, 5, 6, 100, 101, 102, 103, 104, 105], 0.5)
    budget.add(np.arange(1000.0, 1025.0))  # larger than the ring: its newest 10
    assert budget.threshold(model) == np.quantile(np.arange(1015.0, 1025.0), 0.5)


def test_a_new_model_starts_from_its_own_threshold():
    budget = AlertBudget(0.99, window=1_000, min_scores=10)
    budget.threshold(Model(1, 0.2))
    budget.add(np.full(50, 0.9))
    assert budget.threshold(Model(1, 0.2)) == pytest.approx(0.9)
    assert budget.threshold(Model(2, 0.3)) == 0.3  # scores of another model: another scale


def test_a_model_whose_training_threshold_flags_half_the_feed_flags_its_budget_once_warm(
    settings, small_csv
):
    # The first model's threshold is set far too low (as one fit on events unlike today's can
    # be): the budget brings the flags back to about 1 - FLAG_QUANTILE of the events.
    core = ScoringCore(settings.replace(refit_every_events=0, flag_quantile=0.9))
    txns = [t for _line, t in read_transactions(small_csv) if isinstance(t, Transaction)]
    msgs = [RawMessage(t.encode(), offset=i) for i, t in enumerate(txns)]
    rows = [r for r in core.process(msgs[:300]).named_rows]  # the first fit, at warm-up
    low = float(np.quantile([r.score for r in rows], 0.5))
    model = core.scorer.model = replace(core.scorer.model, threshold=low)
    core.scorer.budget = AlertBudget(0.9, min_scores=200)  # as if this model were new
    early = core.process(msgs[300:500]).named_rows  # judged by the model's own threshold
    late = [r for i in range(500, 1500, 100) for r in core.process(msgs[i : i + 100]).named_rows]
    assert sum(r.is_flagged for r in early) / len(early) > 0.3
    assert 0.05 < sum(r.is_flagged for r in late) / len(late) < 0.15
    assert all(r.threshold > model.threshold for r in late)  # each row keeps its own
