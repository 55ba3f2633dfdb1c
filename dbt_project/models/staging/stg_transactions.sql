select
    transaction_id,
    account_id,
    amount,
    merchant,
    location,
    timestamp as transacted_at,
    date(timestamp) as transaction_date,
    cast(strftime('%s', timestamp) as integer) as transacted_epoch,
    json_extract(extras, '$.merchant_category') as merchant_category,
    json_extract(extras, '$.fraud_scenario') as fraud_scenario,
    is_fraud,
    score as ml_score,
    threshold as ml_threshold,
    is_flagged as ml_flagged,
    reasons as ml_reasons,
    model_version,
    scored_at
from {{ source('processor', 'transactions') }}
