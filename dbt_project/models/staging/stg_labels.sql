select
    transaction_id,
    is_fraud,
    labelled_at,
    datetime(received_at, 'unixepoch') as received_at,
    learned
from {{ source('processor', 'labels') }}
