{{ config(unique_key='transaction_date') }}

-- One row per day and detector (the ML flag, each rule, any rule), where is_fraud is known:
-- true/false positives, misses, precision and recall. Every day recomputed by each build (one
-- pass over fraud_flags: 1 s at a million rows) and stored by delete + insert of its days' rows;
-- as a view, every read paid that pass.

{% set detectors = [
    ('ml_flagged', 'ml_flagged'),
    ('rule_high_value', 'rule_high_value'),
    ('rule_rapid_transactions', 'rule_rapid_transactions'),
    ('rule_impossible_travel', 'rule_impossible_travel'),
    ('rule_amount_above_usual', 'rule_amount_above_usual'),
    ('rule_card_testing', 'rule_card_testing'),
    ('rule_merchant_burst', 'rule_merchant_burst'),
    ('any_rule', 'case when rules_hit > 0 then 1 else 0 end'),
] %}

with daily as materialized (
    select
        transaction_date,
        {% for name, hit in detectors %}
        sum(({{ hit }}) * is_fraud) as {{ name }}_tp,
        sum(({{ hit }}) * (1 - is_fraud)) as {{ name }}_fp,
        sum((1 - ({{ hit }})) * is_fraud) as {{ name }}_missed,
        sum({{ hit }}) as {{ name }}_hits,
        {% endfor %}
        sum(is_fraud) as frauds
    from {{ ref('fraud_flags') }}
    where is_fraud is not null
    group by 1
)

{% for name, hit in detectors %}
select
    transaction_date,
    '{{ name }}' as detector,
    {{ name }}_tp as true_positives,
    {{ name }}_fp as false_positives,
    {{ name }}_missed as missed,
    case when {{ name }}_hits > 0 then {{ round_to('1.0 * ' ~ name ~ '_tp / ' ~ name ~ '_hits', 4) }} end as precision,
    case when frauds > 0 then {{ round_to('1.0 * ' ~ name ~ '_tp / frauds', 4) }} end as recall
from daily
{% if not loop.last %}union all{% endif %}
{% endfor %}
