select
    id as dead_letter_id,
    source_topic,
    source_partition,
    source_offset,
    error_field,
    error,
    datetime(received_at, 'unixepoch') as received_at,
    date(received_at, 'unixepoch') as received_date
from {{ source('processor', 'dead_letters') }}
