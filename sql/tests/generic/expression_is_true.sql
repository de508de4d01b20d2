{#- A row-level rule: every row of the model must satisfy `expression` (the rows that do not are
    the failures). Written here instead of taken from a package so `dbt build` needs no
    `dbt deps` download. -#}
{% test expression_is_true(model, expression) %}
SELECT * FROM {{ model }} WHERE NOT coalesce(({{ expression }}), false)
{% endtest %}
