select
    id as dead_letter_id,
    source_topic,
    source_partition,
    source_offset,
    error_field,
    error,
    {{ epoch_to_timestamp('received_at') }} as received_at,
    {{ epoch_to_date('received_at') }} as received_date
from {{ source('processor', 'dead_letters') }}
