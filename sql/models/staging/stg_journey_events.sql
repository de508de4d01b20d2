-- stg_journey_events: which journey each landed event belongs to (documented in _staging.yml).
SELECT event_id, journey_id, customer_id
FROM {{ source('cxj', 'journey_events') }}
