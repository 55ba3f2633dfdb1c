{{ config(unique_key='day_rule') }}

-- One row per day and stream rule (transactions.rules_hit: the rules the stream evaluated on
-- each event, docs/rules.md): its hits, how many of them the models flagged too, and how many
-- were fraud by the label received (else the input's is_fraud): each rule's precision, day by
-- day. Every day recomputed by each build and stored by delete + insert, like daily_kpis.

with hits as (
    select
        t.transaction_date as day,
        hit.value as rule_id,
        t.ml_flagged,
        coalesce(l.is_fraud, t.is_fraud) as is_fraud
    from {{ ref('stg_transactions') }} as t
    {{ join_json_items('t.stream_rules_hit', 'hit') }}
    left join {{ ref('stg_labels') }} as l on l.transaction_id = t.transaction_id
)

select
    cast(day as text) || ':' || rule_id as day_rule,
    day,
    rule_id,
    count(*) as hits,
    sum(ml_flagged) as models_flagged,
    count(is_fraud) as labelled,
    sum(case when is_fraud = 1 then 1 else 0 end) as frauds,
    {{ round_to('1.0 * sum(case when is_fraud = 1 then 1 else 0 end) / nullif(count(is_fraud), 0)', 4) }} as rule_precision
from hits
group by day, rule_id
