{{ config(severity='warn') }}

-- Source freshness: warns (never fails the build) when the stream processor has stored no
-- transaction for var('freshness_warn_hours') hours, or has stored none at all.
select
    datetime(max(scored_at), 'unixepoch') as last_scored_at,
    datetime('now') as checked_at
from {{ source('processor', 'transactions') }}
having max(scored_at) is null
    or max(scored_at) < cast(strftime('%s', 'now') as real) - {{ var('freshness_warn_hours') }} * 3600
