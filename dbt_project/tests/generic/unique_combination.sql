{% test unique_combination(model, columns) %}
-- The combination of `columns` is unique (dbt_utils.unique_combination_of_columns without
-- the package download, which a machine without network could not do).
select {{ columns | join(', ') }}, count(*) as n
from {{ model }}
group by {{ columns | join(', ') }}
having count(*) > 1
{% endtest %}
