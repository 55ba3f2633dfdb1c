select
    version as model_version,
    datetime(fitted_at, 'unixepoch') as fitted_at,
    reason,
    training_rows,
    threshold,
    flag_quantile,
    fit_seconds
from {{ source('processor', 'model_versions') }}
