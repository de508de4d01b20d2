-- stg_journey_events: which journey each landed event belongs to (table `journey_events`).
-- Layer: staging. Grain: event_id (surveys whose thread is unknown yet have no row).
--   event_id     the event (stg_events.event_id)
--   journey_id   its journey (stg_journeys.journey_id)
--   customer_id  the journey's customer
CREATE OR REPLACE VIEW stg_journey_events AS
SELECT event_id, journey_id, customer_id
FROM journey_events;
