"""The core and the sink wired together: what a restart sends that the last run did not."""

from __future__ import annotations

from fraudstream.schema import Transaction
from producer.csv_source import read_transactions
from stream_processor.core import RawMessage
from stream_processor.pipeline import BatchPipeline


def messages(csv_path, n):
    txns = [t for _l, t in read_transactions(csv_path) if isinstance(t, Transaction)][:n]
    return [RawMessage(t.encode(), offset=i) for i, t in enumerate(txns)]


def test_alerts_stored_but_never_delivered_are_sent_with_the_first_batch_after_a_restart(
    db_settings, small_csv
):
    # The first run stores flagged rows, then dies before their alerts are delivered (held
    # events' offsets were committed long before: nothing would replay them).
    settings = db_settings.replace(warmup_events=1, flag_quantile=0.5)
    first = BatchPipeline(settings)
    out = first.handle(messages(small_csv, 200))
    first.close()
    flagged = {a["transaction_id"] for a in out.alerts}
    assert flagged
    again = BatchPipeline(settings)
    try:
        resent = again.handle(messages(small_csv, 250)[200:])
        resent_ids = [a["transaction_id"] for a in resent.alerts]
        assert flagged <= set(resent_ids)
        assert len(resent_ids) == len(set(resent_ids))  # each once
        again.published(dict.fromkeys(resent_ids, 1.0))
        assert again.sink.unpublished_alerts() == []
        later = again.handle(messages(small_csv, 260)[250:])
        assert not flagged & set(later.alert_ids)  # sent once, with the first batch only
    finally:
        again.close()
