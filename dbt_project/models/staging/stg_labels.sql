select
    transaction_id,
    is_fraud,
    labelled_at,
    {{ epoch_to_timestamp('received_at') }} as received_at,
    learned
from {{ source('processor', 'labels') }}
