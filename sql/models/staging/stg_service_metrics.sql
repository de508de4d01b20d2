-- stg_service_metrics: the service metrics of each journey (documented in _staging.yml; rules in
-- docs/metrics.md, "Service metrics"), plus the event-time watermark of all landed events.
SELECT m.* EXCLUDE (batch_id),
       (SELECT max(occurred_at) FROM {{ source('cxj', 'events') }}) AS newest_event_at
FROM {{ source('cxj', 'journey_metrics') }} m
