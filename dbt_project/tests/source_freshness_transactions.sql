{{ config(severity='warn') }}

-- Source freshness: warns (never fails the build) when the stream processor has stored no
-- transaction for var('freshness_warn_hours') hours, or has stored none at all.
select
    {{ epoch_to_timestamp('max(scored_at)') }} as last_scored_at,
    {{ epoch_to_timestamp(now_epoch()) }} as checked_at
from {{ source('processor', 'transactions') }}
having max(scored_at) is null
    or max(scored_at) < {{ now_epoch() }} - {{ var('freshness_warn_hours') }} * 3600
