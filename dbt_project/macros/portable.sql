{#
  The SQL that differs between the two databases the processor writes (dbt-sqlite, dbt-postgres),
  one macro each; everything else in the models is the same SQL on both. Times are stored as
  text ('YYYY-MM-DD HH:MM:SS[.ffffff]', UTC) and epoch seconds (fraudstream.tables).
#}

{# Epoch seconds as a UTC date and time: text on SQLite, a timestamp on PostgreSQL. #}
{% macro epoch_to_timestamp(column) %}{{ return(adapter.dispatch('epoch_to_timestamp')(column)) }}{% endmacro %}
{% macro sqlite__epoch_to_timestamp(column) %}datetime({{ column }}, 'unixepoch'){% endmacro %}
{% macro postgres__epoch_to_timestamp(column) %}(to_timestamp({{ column }}) at time zone 'UTC'){% endmacro %}

{# Epoch seconds as a UTC date: 'YYYY-MM-DD' text on SQLite, a date on PostgreSQL. #}
{% macro epoch_to_date(column) %}{{ return(adapter.dispatch('epoch_to_date')(column)) }}{% endmacro %}
{% macro sqlite__epoch_to_date(column) %}date({{ column }}, 'unixepoch'){% endmacro %}
{% macro postgres__epoch_to_date(column) %}cast(to_timestamp({{ column }}) at time zone 'UTC' as date){% endmacro %}

{# A stored UTC time (text) as its date, of the same type as epoch_to_date's. #}
{% macro text_to_date(column) %}{{ return(adapter.dispatch('text_to_date')(column)) }}{% endmacro %}
{% macro sqlite__text_to_date(column) %}date({{ column }}){% endmacro %}
{% macro postgres__text_to_date(column) %}cast({{ column }} as date){% endmacro %}

{# A stored UTC time (text) as epoch seconds, an integer. #}
{% macro text_to_epoch(column) %}{{ return(adapter.dispatch('text_to_epoch')(column)) }}{% endmacro %}
{% macro sqlite__text_to_epoch(column) %}cast(strftime('%s', {{ column }}) as integer){% endmacro %}
{% macro postgres__text_to_epoch(column) %}cast(floor(extract(epoch from cast({{ column }} as timestamp))) as bigint){% endmacro %}

{# The first day of the year of a date (either type above). #}
{% macro start_of_year(column) %}{{ return(adapter.dispatch('start_of_year')(column)) }}{% endmacro %}
{% macro sqlite__start_of_year(column) %}date({{ column }}, 'start of year'){% endmacro %}
{% macro postgres__start_of_year(column) %}cast(date_trunc('year', {{ column }}) as date){% endmacro %}

{# Now, in epoch seconds. #}
{% macro now_epoch() %}{{ return(adapter.dispatch('now_epoch')()) }}{% endmacro %}
{% macro sqlite__now_epoch() %}cast(strftime('%s', 'now') as real){% endmacro %}
{% macro postgres__now_epoch() %}extract(epoch from now()){% endmacro %}

{# The text of a key of a JSON object stored as text (the extras column). #}
{% macro json_text(column, key) %}{{ return(adapter.dispatch('json_text')(column, key)) }}{% endmacro %}
{% macro sqlite__json_text(column, key) %}json_extract({{ column }}, '$.{{ key }}'){% endmacro %}
{% macro postgres__json_text(column, key) %}(cast({{ column }} as json) ->> '{{ key }}'){% endmacro %}

{# A number rounded to `digits` decimals (PostgreSQL rounds numerics only, not floats). #}
{% macro round_to(expression, digits) %}{{ return(adapter.dispatch('round_to')(expression, digits)) }}{% endmacro %}
{% macro sqlite__round_to(expression, digits) %}round({{ expression }}, {{ digits }}){% endmacro %}
{% macro postgres__round_to(expression, digits) %}cast(round(cast({{ expression }} as numeric), {{ digits }}) as double precision){% endmacro %}

{# Joins each item of a JSON list stored as text (transactions.rules_hit) as `alias`.value, one row
   per item; a null list joins no row. #}
{% macro join_json_items(column, alias) %}{{ return(adapter.dispatch('join_json_items')(column, alias)) }}{% endmacro %}
{% macro sqlite__join_json_items(column, alias) %}join json_each({{ column }}) as {{ alias }}{% endmacro %}
{% macro postgres__join_json_items(column, alias) %}cross join lateral json_array_elements_text(cast({{ column }} as json)) as {{ alias }}(value){% endmacro %}
