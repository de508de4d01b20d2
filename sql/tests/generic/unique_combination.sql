{#- The columns together are a key of the model: each combination occurs once. -#}
{% test unique_combination(model, columns) %}
SELECT {{ columns | join(', ') }}, count(*) AS occurrences
FROM {{ model }}
GROUP BY {{ columns | join(', ') }}
HAVING count(*) > 1
{% endtest %}
