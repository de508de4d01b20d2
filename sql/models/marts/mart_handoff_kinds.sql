-- mart_handoff_kinds: handoffs by day, kind and team route, from the audited handoff rows
-- (documented in _marts.yml).
SELECT
    occurred_date AS day,
    kind,
    coalesce(from_team, 'none') AS from_team,
    coalesce(to_team, 'none') AS to_team,
    count(*) AS handoffs,
    count(DISTINCT journey_id) AS journeys,
    count(*) FILTER (WHERE escalation) AS escalations,
    count(*) FILTER (WHERE after_first_reply) AS post_reply,
    count(*) / sum(count(*)) OVER (PARTITION BY occurred_date) AS share_of_day
FROM {{ ref('stg_journey_handoffs') }}
GROUP BY occurred_date, kind, coalesce(from_team, 'none'), coalesce(to_team, 'none')
