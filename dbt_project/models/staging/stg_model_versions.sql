select
    version as model_version,
    kind,
    {{ epoch_to_timestamp('fitted_at') }} as fitted_at,
    reason,
    training_rows,
    training_frauds,
    threshold,
    flag_quantile,
    fit_seconds
from {{ source('processor', 'model_versions') }}
