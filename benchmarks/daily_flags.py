"""The share of each day's transactions a run flagged: the analysts' load, day by day.

    python -m benchmarks.daily_flags DATABASE_URL [--budget 0.01]

For example on a cold-start feed (many accounts, few transactions each), replayed by
``fraudstream run --labels``:

    fraudstream generate --rows 300000 --days 60 --accounts 60000 --seed 11 --out cold.csv
    fraudstream run --csv cold.csv --labels --no-dbt --fresh --db cold.db
    python -m benchmarks.daily_flags sqlite:///cold.db

Per day: transactions, the share flagged (``is_flagged``), the share above the forest's
threshold in effect (``score > threshold``) and the share of frauds; the days above twice the
budget (``1 - FLAG_QUANTILE`` unless given) are marked.
"""

from __future__ import annotations

import argparse

from sqlalchemy import text

from fraudstream.settings import Settings
from fraudstream.tables import make_engine, shown_url

DAILY = """
select substr(cast(timestamp as text), 1, 10) as day, count(*) as n,
       sum(is_flagged) as flagged, sum(case when score > threshold then 1 else 0 end) as forest,
       sum(coalesce(is_fraud, 0)) as frauds
from transactions group by 1 order by 1
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("database_url")
    parser.add_argument("--budget", type=float, default=1 - Settings().flag_quantile)
    args = parser.parse_args()
    engine = make_engine(args.database_url)
    try:
        with engine.connect() as conn:
            days = conn.execute(text(DAILY)).all()
    finally:
        engine.dispose()
    print(f"{shown_url(args.database_url)}: budget {args.budget:.2%}, marked above twice it")
    print(f"{'day':<10} {'events':>8} {'flagged':>8} {'forest':>7} {'fraud':>6}")
    over = 0
    for day, n, flagged, forest, frauds in days:
        share = flagged / n
        mark = " *" if share > 2 * args.budget else ""
        over += bool(mark)
        print(f"{day:<10} {n:>8,} {share:>8.2%} {forest / n:>7.2%} {frauds / n:>6.2%}{mark}")
    total = sum(d[1] for d in days)
    flagged = sum(d[2] for d in days)
    print(f"{len(days)} days, {over} above twice the budget; {flagged / total:.2%} flagged overall")


if __name__ == "__main__":
    main()
