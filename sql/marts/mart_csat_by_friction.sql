-- mart_csat_by_friction: CSAT against handoffs and channel hops (does friction hurt CSAT?).
-- Layer: marts. Grain: (handoff_bucket, hop_bucket). All journeys, open ones included.
-- Sums are kept next to the means so rows roll up exactly (e.g. by handoff_bucket alone:
-- sum(csat_sum) / sum(csat_responses)).
--   handoff_bucket       handoff_count as '0', '1', '2', '3+'
--   hop_bucket           channel_hops as '0', '1', '2', '3+'
--   journeys             journeys in the cell
--   csat_responses       of them with a CSAT answer
--   response_rate        csat_responses / journeys
--   csat_sum             sum of their CSAT answers
--   avg_csat             csat_sum / csat_responses
--   satisfied_responses  CSAT answers of 4 or 5
--   csat_satisfied_rate  satisfied_responses / csat_responses
--   nps_responses        journeys with an NPS answer
--   avg_nps              mean NPS answer (0-10)
CREATE OR REPLACE VIEW mart_csat_by_friction AS
SELECT
    handoff_bucket,
    hop_bucket,
    count(*) AS journeys,
    count(csat) AS csat_responses,
    count(csat) / count(*) AS response_rate,
    sum(csat) AS csat_sum,
    avg(csat) AS avg_csat,
    count(*) FILTER (WHERE csat >= 4) AS satisfied_responses,
    count(*) FILTER (WHERE csat >= 4) / nullif(count(csat), 0) AS csat_satisfied_rate,
    count(nps) AS nps_responses,
    avg(nps) AS avg_nps
FROM core_journeys
GROUP BY handoff_bucket, hop_bucket;
