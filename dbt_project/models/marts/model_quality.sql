{{ config(materialized='view') }}

-- One row per day and detector (the ML flag, each rule, any rule), where is_fraud is known:
-- true/false positives, misses, precision and recall.

with labelled as (
    select * from {{ ref('fraud_flags') }} where is_fraud is not null
),

hits as (
    {% set detectors = [
        'ml_flagged', 'rule_high_value', 'rule_rapid_transactions', 'rule_impossible_travel',
        'rule_amount_above_usual', 'rule_card_testing', 'rule_merchant_burst'
    ] %}
    {% for d in detectors %}
    select transaction_date, '{{ d }}' as detector, {{ d }} as hit, is_fraud from labelled
    union all
    {% endfor %}
    select
        transaction_date, 'any_rule' as detector, case when rules_hit > 0 then 1 else 0 end, is_fraud
    from labelled
)

select
    transaction_date,
    detector,
    sum(hit * is_fraud) as true_positives,
    sum(hit * (1 - is_fraud)) as false_positives,
    sum((1 - hit) * is_fraud) as missed,
    case when sum(hit) > 0 then round(1.0 * sum(hit * is_fraud) / sum(hit), 4) end as precision,
    case when sum(is_fraud) > 0 then round(1.0 * sum(hit * is_fraud) / sum(is_fraud), 4) end as recall
from hits
group by 1, 2
