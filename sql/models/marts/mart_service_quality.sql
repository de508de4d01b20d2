-- mart_service_quality: the service metrics per day and entry channel (documented in _marts.yml).
-- Journeys are counted on the UTC day they started (a cohort), as in mart_daily_kpis.
SELECT
    started_date AS day,
    entry_channel AS channel,
    count(*) AS journeys,
    count(*) FILTER (WHERE first_resolved_at IS NOT NULL) AS resolved_once,
    quantile_cont(first_resolution_s, 0.5) / 3600.0 AS median_first_resolution_h,
    quantile_cont(time_to_resolution_s, 0.5) / 3600.0 AS median_full_resolution_h,
    quantile_cont(time_to_resolution_business_s, 0.5) / 3600.0 AS median_ttr_business_h,
    quantile_cont(first_response_business_s, 0.5) / 60.0 AS median_first_response_business_min,
    count(durably_resolved_now) AS durable_decided,
    count(*) FILTER (WHERE durably_resolved_now) / nullif(count(durably_resolved_now), 0) AS durable_rate,
    count(*) FILTER (WHERE first_resolved_at IS NOT NULL AND durably_resolved_now IS NULL) AS durable_pending,
    count(repeat_contact_within_s) AS repeat_contacts,
    count(repeat_contact_within_s) / nullif(count(*) FILTER (WHERE first_resolved_at IS NOT NULL), 0) AS repeat_contact_rate,
    count(*) FILTER (WHERE one_contact_resolution) / nullif(count(*) FILTER (WHERE status = 'resolved'), 0)
        AS one_contact_resolution_rate,
    count(*) FILTER (WHERE started_with_bot) AS bot_started,
    count(*) FILTER (WHERE bot_only) AS bot_only,
    quantile_cont(first_human_response_after_bot_s, 0.5) / 60.0 AS median_human_after_bot_min,
    count(*) FILTER (WHERE post_reply_reassignments > 0) / nullif(count(first_response_s), 0)
        AS post_reply_reassignment_rate,
    count(*) FILTER (WHERE agent_pingpong_returns > 0) AS agent_pingpong_journeys
FROM {{ ref('core_service_metrics') }}
GROUP BY started_date, entry_channel
