"""What 7-day-late labels cannot see of a compromised merchant, on a ``make evaluate`` database.

    python -m benchmarks.compromise_weeks CSV DATABASE_URL

A compromise's first week (no label about it has arrived) and the week after it ends (every
label that arrives still says fraud) are invisible to any feature made of labels. This counts,
in the test period of ``fraudstream evaluate``: the compromise's frauds in its first week, the
legitimate events at its merchant in the week after it ended and how many of them the supervised
model ranks among its top 2,000, and the scenario's average precision with those left out.
"""

from __future__ import annotations

import argparse

import pandas as pd
from sklearn.metrics import average_precision_score

from fraudstream import evaluate

WEEK = pd.Timedelta(days=7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    parser.add_argument("database_url")
    args = parser.parse_args()
    truth = pd.read_csv(
        args.csv,
        usecols=["transaction_id", "timestamp", "merchant", "fraud_scenario"],
        dtype={"transaction_id": str},
    )
    truth["time"] = pd.to_datetime(truth["timestamp"], format="ISO8601")
    compromises = (
        truth[truth["fraud_scenario"] == "compromised_merchant"]
        .groupby("merchant")["time"]
        .agg(began="min", ended="max")
    )
    frame = evaluate.load(args.database_url)
    period = evaluate._test_period(frame, None, 0.5)
    test = evaluate._without_known_compromised(frame, period)
    test = test.merge(truth[["transaction_id", "merchant"]], on="transaction_id", how="left")
    test = test.join(compromises, on="merchant")
    legit = test["is_fraud"] == 0
    fraud = test["fraud_scenario"] == "compromised_merchant"
    first_week = fraud & (test["time"] < test["began"] + WEEK)
    week_after = legit & (test["time"] > test["ended"]) & (test["time"] <= test["ended"] + WEEK)
    top = test["supervised_score"].rank(ascending=False, method="first") <= 2000
    score = test["supervised_score"].to_numpy()

    def ap(positives, negatives) -> float:
        rows = (positives | negatives).to_numpy()
        return average_precision_score(positives[rows], score[rows])

    print(f"compromised-merchant frauds in the test period: {int(fraud.sum()):,}, "
          f"{int(first_week.sum()):,} in their compromise's first week")  # fmt: skip
    print(f"legitimate events at a merchant in the week after its compromise ended: "
          f"{int(week_after.sum()):,}; among the supervised model's top 2,000: "
          f"{int((week_after & top).sum()):,} of its {int((legit & top).sum()):,} legitimate")  # fmt: skip
    print(f"average precision, compromised merchant: {ap(fraud, legit):.3f}; "
          f"without those two weeks: {ap(fraud & ~first_week, legit & ~week_after):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
