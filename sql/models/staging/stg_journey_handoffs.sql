-- stg_journey_handoffs: every handoff counted in journeys.handoff_count, with its UTC day
-- (documented in _staging.yml).
SELECT h.* EXCLUDE (batch_id),
       CAST(timezone('UTC', h.occurred_at) AS DATE) AS occurred_date
FROM {{ source('cxj', 'journey_handoffs') }} h
