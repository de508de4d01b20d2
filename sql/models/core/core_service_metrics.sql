-- core_service_metrics: core_journeys with the service metrics beside them (documented in _core.yml).
-- durably_resolved_now also decides a pending durability with the newest landed event of any
-- customer as an event-time watermark, never the wall clock (docs/metrics.md, "Kinds of resolution").
SELECT
    j.journey_id,
    j.customer_id,
    j.status,
    j.started_date,
    j.entry_channel,
    j.threads,
    j.time_to_resolution_s,
    j.first_response_s,
    j.fcr,
    m.* EXCLUDE (journey_id, customer_id),
    coalesce(m.durably_resolved,
             CASE WHEN m.durable_check_at <= m.newest_event_at THEN true END) AS durably_resolved_now,
    m.time_to_resolution_business_s / 3600.0 AS ttr_business_h
FROM {{ ref('core_journeys') }} j
JOIN {{ ref('stg_service_metrics') }} m USING (journey_id)
