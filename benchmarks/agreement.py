"""How far two runs over the same events agree: rows, flags, and each run against is_fraud.

    python -m benchmarks.agreement DATABASE_URL_A DATABASE_URL_B

For example one processor against two (``fraudstream run --workers 2``) on the same CSV, each
into a database of its own; two one-processor runs give the noise floor (refits start when the
machine lets them, so two runs of one processor do not flag exactly alike either).
"""

from __future__ import annotations

import sys

from sqlalchemy import text

from fraudstream.tables import make_engine, shown_url


def flags(url: str) -> dict[str, tuple[int, int]]:
    """transaction_id -> (is_flagged, is_fraud) of every stored row."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("select transaction_id, is_flagged, is_fraud from transactions"))
            return {tid: (flagged, fraud) for tid, flagged, fraud in rows}
    finally:
        engine.dispose()


def quality(run: dict[str, tuple[int, int]]) -> str:
    flagged = sum(f for f, _ in run.values())
    frauds = sum(1 for _, y in run.values() if y)
    hits = sum(1 for f, y in run.values() if f and y)
    precision = hits / flagged if flagged else float("nan")
    recall = hits / frauds if frauds else float("nan")
    return f"{flagged:,} flagged, precision {precision:.3f}, recall {recall:.3f}"


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    a, b = flags(sys.argv[1]), flags(sys.argv[2])
    both = a.keys() & b.keys()
    same = sum(1 for tid in both if a[tid][0] == b[tid][0])
    flagged_a = {tid for tid in both if a[tid][0]}
    flagged_b = {tid for tid in both if b[tid][0]}
    union = flagged_a | flagged_b
    print(f"A {shown_url(sys.argv[1])}: {len(a):,} rows, {quality(a)}")
    print(f"B {shown_url(sys.argv[2])}: {len(b):,} rows, {quality(b)}")
    print(f"rows in both: {len(both):,}; in A only: {len(a.keys() - b.keys()):,}; "
          f"in B only: {len(b.keys() - a.keys()):,}")  # fmt: skip
    print(f"same flag: {same / len(both):.4f} of the rows in both")
    print(f"flagged by both / by either: {len(flagged_a & flagged_b):,} / {len(union):,} "
          f"({len(flagged_a & flagged_b) / len(union):.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
