-- CX Journeys: landing tables (the "raw + core" layer the pipeline writes).
-- All timestamps are TIMESTAMPTZ; the pipeline's session runs in UTC.
-- Applied idempotently by pipelines/storage/store.py at every start.

-- Every valid, de-duplicated event (one row per event_id), exactly as landed.
CREATE TABLE IF NOT EXISTS events (
    event_id          VARCHAR NOT NULL,      -- contract event_id (unique: the landing adds only ids it found absent)
    event_type        VARCHAR NOT NULL,      -- e.g. ticket.created
    occurred_at       TIMESTAMPTZ NOT NULL,  -- event time, normalised to an instant
    occurred_at_text  VARCHAR,               -- occurred_at as sent (keeps the original offset)
    customer_id       VARCHAR NOT NULL,
    ticket_id         VARCHAR,
    chat_id           VARCHAR,
    survey_id         VARCHAR,
    channel           VARCHAR,
    handler_type      VARCHAR,
    agent_id          VARCHAR,
    team              VARCHAR,
    status            VARCHAR,
    author            VARCHAR,
    outcome           VARCHAR,
    csat              INTEGER,
    nps               INTEGER,
    payload           JSON NOT NULL,         -- the whole event, unknown fields included
    source_topic      VARCHAR NOT NULL,      -- where it was first delivered
    source_partition  INTEGER NOT NULL,
    source_offset     BIGINT NOT NULL,
    kafka_timestamp   TIMESTAMPTZ,           -- broker/producer record timestamp
    batch_id          BIGINT NOT NULL,       -- pipeline_batches.batch_id that landed it
    landed_at         TIMESTAMPTZ NOT NULL
);

-- One row per journey; rewritten whenever a batch brings events of its customer.
CREATE TABLE IF NOT EXISTS journeys (
    journey_id           VARCHAR NOT NULL,   -- stable: derived from customer and first thread
    customer_id          VARCHAR NOT NULL,
    status               VARCHAR NOT NULL,   -- open | resolved | unresolved
    started_at           TIMESTAMPTZ NOT NULL,
    resolved_at          TIMESTAMPTZ,        -- last time it became resolved; null unless resolved
    last_event_at        TIMESTAMPTZ NOT NULL,
    updated_at           TIMESTAMPTZ NOT NULL, -- wall-clock time the row was last recomputed
    time_to_resolution_s DOUBLE,             -- resolved_at - started_at
    first_response_s     DOUBLE,             -- first agent-authored message - started_at
    handoff_count        INTEGER NOT NULL,
    team_handoff_count   INTEGER NOT NULL,
    channel_hops         INTEGER NOT NULL,
    touchpoint_count     INTEGER NOT NULL,   -- thread starts + customer messages with a known channel
    contact_count        INTEGER NOT NULL,   -- threads (tickets + chats)
    reopen_count         INTEGER NOT NULL,
    csat                 INTEGER,            -- latest non-null CSAT (1-5)
    nps                  INTEGER,            -- latest non-null NPS (0-10)
    fcr                  BOOLEAN NOT NULL,   -- resolved, one contact, no reopen
    channels             VARCHAR[] NOT NULL, -- distinct touchpoint channels, first-seen order
    agents               VARCHAR[] NOT NULL, -- distinct assigned agents/bots, first-seen order
    teams                VARCHAR[] NOT NULL, -- distinct assigned teams, first-seen order
    threads              VARCHAR[] NOT NULL, -- 'ticket:<id>' / 'chat:<id>' in start order
    event_count          INTEGER NOT NULL,
    batch_id             BIGINT NOT NULL
);

-- Which journey each landed event belongs to (surveys of unknown threads have no row yet).
CREATE TABLE IF NOT EXISTS journey_events (
    event_id    VARCHAR NOT NULL,
    journey_id  VARCHAR NOT NULL,
    customer_id VARCHAR NOT NULL,
    batch_id    BIGINT           -- the batch that last wrote the row (its journey's journeys.batch_id)
);

-- Every message that could not be landed, with the reason; nothing is dropped silently.
CREATE TABLE IF NOT EXISTS dead_letters (
    topic           VARCHAR NOT NULL,
    "partition"     INTEGER NOT NULL,
    "offset"        BIGINT NOT NULL,
    kafka_timestamp TIMESTAMPTZ,
    raw             BLOB NOT NULL,
    reason          VARCHAR NOT NULL,   -- stable code, see docs
    detail          VARCHAR,
    batch_id        BIGINT NOT NULL,
    landed_at       TIMESTAMPTZ NOT NULL
);

-- Next offset to read per partition; written in the same transaction as the results.
CREATE TABLE IF NOT EXISTS pipeline_offsets (
    topic        VARCHAR NOT NULL,
    "partition"  INTEGER NOT NULL,
    next_offset  BIGINT NOT NULL,
    batch_id     BIGINT NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL
);

-- One row per landed batch: what it read and what came of it.
CREATE TABLE IF NOT EXISTS pipeline_batches (
    batch_id             BIGINT NOT NULL,
    started_at           TIMESTAMPTZ NOT NULL,
    finished_at          TIMESTAMPTZ NOT NULL,
    duration_s           DOUBLE NOT NULL,
    ingest_s             DOUBLE NOT NULL,   -- Beam stage 1: read, parse, validate, dedup
    assemble_s           DOUBLE NOT NULL,   -- Beam stage 2: journey assembly
    land_s               DOUBLE NOT NULL,   -- DuckDB transaction
    consumed             BIGINT NOT NULL,   -- records read from Kafka
    landed               BIGINT NOT NULL,   -- new events landed
    duplicates           BIGINT NOT NULL,   -- re-delivered event_ids (in batch or already landed)
    dead_letters         BIGINT NOT NULL,
    customers_touched    BIGINT NOT NULL,
    journeys_written     BIGINT NOT NULL,
    min_occurred_at      TIMESTAMPTZ,
    max_occurred_at      TIMESTAMPTZ,
    min_kafka_timestamp  TIMESTAMPTZ,
    max_kafka_timestamp  TIMESTAMPTZ,
    offsets              JSON NOT NULL      -- [{topic, partition, from, to}]
);

-- Per partition: the last record landed from it (its offset, Kafka timestamp and a digest of its
-- key and value), written in the same transaction as pipeline_offsets. Before every batch the
-- pipeline fetches that record again: a different record, or none, means the broker's log is
-- not the one landed from (a recreated topic). See docs/reliability.md.
CREATE TABLE IF NOT EXISTS source_fingerprints (
    topic               VARCHAR NOT NULL,
    "partition"         INTEGER NOT NULL,
    record_offset       BIGINT NOT NULL,   -- offset of the fingerprinted record (next_offset - 1)
    kafka_timestamp_ms  BIGINT,            -- its Kafka timestamp
    digest              VARCHAR NOT NULL,  -- sha256 of its length-prefixed key and value (first 32 hex)
    batch_id            BIGINT NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL
);

-- Every time the broker's log did not match what was landed, and what the pipeline did.
CREATE TABLE IF NOT EXISTS source_resets (
    topic        VARCHAR NOT NULL,
    "partition"  INTEGER NOT NULL,
    kind         VARCHAR NOT NULL,  -- recreated | retention | partition_removed
    from_offset  BIGINT NOT NULL,   -- the stored next offset when it was detected
    to_offset    BIGINT,            -- where reading resumes (null: partition_removed)
    records      BIGINT,            -- recreated: records of the new log re-read instead of skipped;
                                    -- retention: records deleted unread (lost);
                                    -- partition_removed: records known unread (null: unknown)
    detail       VARCHAR NOT NULL,  -- the cause, as logged
    detected_at  TIMESTAMPTZ NOT NULL,
    batch_id     BIGINT NOT NULL    -- the next batch, which resumes from to_offset
);

-- ---------------------------------------------------------------- service metrics
-- (docs/metrics.md, "Service metrics"). Rewritten with the journeys of the customers a batch
-- touches, in the same transaction; one row per journeys row.
CREATE TABLE IF NOT EXISTS journey_metrics (
    journey_id                       VARCHAR NOT NULL,
    customer_id                      VARCHAR NOT NULL,
    calendar                         VARCHAR NOT NULL,  -- business-hours calendar that measured it
    time_to_resolution_business_s    DOUBLE,    -- business seconds from started_at to resolved_at
    first_response_business_s        DOUBLE,    -- business seconds from started_at to the first agent message
    first_resolved_at                TIMESTAMPTZ, -- first time the journey became resolved
    first_resolution_s               DOUBLE,    -- first_resolved_at - started_at
    first_resolution_business_s      DOUBLE,
    resolution_count                 INTEGER NOT NULL, -- times it became resolved
    durably_resolved                 BOOLEAN,   -- a resolved spell lasted durable_days; NULL = not known yet
    durable_check_at                 TIMESTAMPTZ, -- when a pending resolution becomes durable if nothing ends it
    repeat_contact_within_s          DOUBLE,    -- next contact after the first resolution, within the window
    repeat_contact_thread            VARCHAR,   -- that contact: 'ticket:<id>' / 'chat:<id>'
    repeat_contact_channel           VARCHAR,
    one_contact_resolution           BOOLEAN NOT NULL, -- fcr and no repeat contact within the window
    started_with_bot                 BOOLEAN NOT NULL, -- first assignment was to a bot
    bot_only                         BOOLEAN NOT NULL, -- only bots assigned, no agent message
    first_bot_response_s             DOUBLE,    -- first bot message - started_at (never a first response)
    bot_handoff_at                   TIMESTAMPTZ, -- first bot -> human handoff (journeys that started with a bot)
    first_human_response_after_bot_s DOUBLE,    -- first agent message after that handoff - the handoff
    bot_to_human_handoffs            INTEGER NOT NULL,
    human_to_bot_handoffs            INTEGER NOT NULL,
    bot_to_bot_handoffs              INTEGER NOT NULL,
    team_to_team_handoffs            INTEGER NOT NULL, -- between people or queues, team changed
    agent_to_agent_handoffs          INTEGER NOT NULL, -- between people, same team
    escalation_handoffs              INTEGER NOT NULL, -- chat -> linked ticket
    post_reply_reassignments         INTEGER NOT NULL, -- handoffs after the first agent message
    distinct_human_agents            INTEGER NOT NULL,
    distinct_teams                   INTEGER NOT NULL,
    agent_pingpong_immediate         INTEGER NOT NULL, -- A -> B -> A among agents
    agent_pingpong_returns           INTEGER NOT NULL, -- back to any earlier agent
    team_pingpong_immediate          INTEGER NOT NULL,
    team_pingpong_returns            INTEGER NOT NULL,
    batch_id                         BIGINT NOT NULL
);

-- Every handoff counted in journeys.handoff_count, with its kind: the audit trail of the counts.
CREATE TABLE IF NOT EXISTS journey_handoffs (
    journey_id        VARCHAR NOT NULL,
    customer_id       VARCHAR NOT NULL,
    seq               INTEGER NOT NULL,   -- 1, 2, ... in event order within the journey
    occurred_at       TIMESTAMPTZ NOT NULL, -- the assignment that made the handoff
    event_id          VARCHAR NOT NULL,
    thread            VARCHAR NOT NULL,   -- thread the work went to
    kind              VARCHAR NOT NULL,   -- bot_to_human | human_to_bot | bot_to_bot | team_to_team | agent_to_agent
    from_agent        VARCHAR,
    from_team         VARCHAR,
    from_is_bot       BOOLEAN,            -- NULL: no agent known (a team queue)
    to_agent          VARCHAR,
    to_team           VARCHAR,
    to_is_bot         BOOLEAN,
    team_changed      BOOLEAN NOT NULL,
    agent_changed     BOOLEAN NOT NULL,
    escalation        BOOLEAN NOT NULL,   -- chat -> its linked ticket
    after_first_reply BOOLEAN NOT NULL,   -- after the journey's first agent message
    batch_id          BIGINT NOT NULL
);

-- Every change of a landed journey's values: which batch, why, and before/after of the changed
-- columns. Written in the landing transaction; a journey's first landing is not a revision.
CREATE TABLE IF NOT EXISTS journey_revisions (
    batch_id          BIGINT NOT NULL,
    revised_at        TIMESTAMPTZ NOT NULL, -- wall-clock time of the landing
    journey_id        VARCHAR NOT NULL,     -- the journey as it was landed before
    customer_id       VARCHAR NOT NULL,
    change            VARCHAR NOT NULL,     -- changed | removed (its threads now form other journeys)
    replaced_by       VARCHAR[] NOT NULL,   -- removed: the journeys its events belong to now
    reason            VARCHAR NOT NULL,     -- late_events | new_events
    trigger_event_ids VARCHAR[] NOT NULL,   -- this batch's events that caused it (at most 20)
    trigger_events    INTEGER NOT NULL,     -- how many there were
    late_events       INTEGER NOT NULL,     -- of those, older than the journey's last_event_at before
    changed_columns   VARCHAR[] NOT NULL,
    before            JSON NOT NULL,        -- {column: value} of the changed columns, before
    after             JSON NOT NULL         -- ... and after (removed: {})
);

-- Every losing copy of an event whose content differs from the winning copy (conflicting
-- copies of one event_id; the copy with the smallest content hash wins, see docs/metrics.md).
-- Nothing disappears silently: the loser is kept with its payload and Kafka coordinates.
CREATE TABLE IF NOT EXISTS event_conflicts (
    event_id        VARCHAR NOT NULL,
    winner_hash     VARCHAR NOT NULL,   -- content hash of the copy in events (updated if a later copy wins)
    loser_hash      VARCHAR NOT NULL,   -- content hash of this losing copy
    payload         VARCHAR NOT NULL,   -- the losing message as sent
    topic           VARCHAR NOT NULL,
    "partition"     INTEGER NOT NULL,
    "offset"        BIGINT NOT NULL,
    kafka_timestamp TIMESTAMPTZ,
    batch_id        BIGINT NOT NULL,    -- the batch that found the conflict
    detected_at     TIMESTAMPTZ NOT NULL
);

-- Deliveries of an event's winning content other than the one in events (plain duplicates),
-- by coordinates only: if a later copy beats the landed one, these become conflicts too.
CREATE TABLE IF NOT EXISTS duplicate_deliveries (
    event_id        VARCHAR NOT NULL,
    content_hash    VARCHAR NOT NULL,
    topic           VARCHAR NOT NULL,
    "partition"     INTEGER NOT NULL,
    "offset"        BIGINT NOT NULL,
    kafka_timestamp TIMESTAMPTZ,
    batch_id        BIGINT NOT NULL
);

-- One row per attempt to run a batch, written before its stages run: an attempt left without
-- an outcome means the process died on it. Failed attempts shrink the next one until a
-- single poison record is isolated and dead-lettered (docs/reliability.md, "Memory budget").
CREATE TABLE IF NOT EXISTS batch_attempts (
    attempt_id  BIGINT NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL,
    ranges      JSON NOT NULL,          -- [{topic, partition, from, to}] as planned
    records     BIGINT NOT NULL,        -- offsets planned
    outcome     VARCHAR,                -- landed | failed | died | died_again | broker | unaccounted | error; null while running
    error       VARCHAR,
    finished_at TIMESTAMPTZ,
    resolved    BOOLEAN NOT NULL DEFAULT false  -- a failure whose offsets have all landed since
);

-- Landed events replaced by a winning copy from a later batch (see event_conflicts for the
-- losers): which batch replaced which event, and for which customers journeys were recomputed.
CREATE TABLE IF NOT EXISTS event_replacements (
    event_id         VARCHAR NOT NULL,
    old_hash         VARCHAR NOT NULL,
    new_hash         VARCHAR NOT NULL,
    old_customer_id  VARCHAR NOT NULL,
    batch_id         BIGINT NOT NULL
);

-- A 64-bit digest of every landed event_id (one row per events row, in no particular order).
-- Why it is there: the landing looks up which of a batch's events are landed already by
-- scanning these integers instead of the event_id strings (docs/architecture.md, "Looking up
-- landed events by digest"); only ids whose digest matches are then compared in full. md5 is
-- used because its value never changes between DuckDB versions. Written in the landing's
-- transaction; rebuilt from events at open when the row counts differ.
CREATE TABLE IF NOT EXISTS event_id_digests (
    id_digest        UBIGINT NOT NULL        -- md5_number_lower(events.event_id)
);

-- Which blocks of events rows hold each customer's events: one row per (customer, block), where a
-- block is the events rows whose rowid // 122880 is the same, written in block order. Why it is there: a batch finds the
-- rows of the customers it touches by row id ranges, and this map gives those ranges without
-- reading the customer_id of every landed event (docs/architecture.md, "A map from customers to
-- the blocks of their events"). Exact because events rows are never deleted and keep their
-- rowid when a winning copy replaces them. Written in the landing's transaction; rebuilt from
-- events at open when customer_event_blocks_covered does not hold the events table's row count.
CREATE TABLE IF NOT EXISTS customer_event_blocks (
    customer_digest  UBIGINT NOT NULL,       -- md5_number_lower(events.customer_id)
    block            BIGINT NOT NULL         -- rowid // 122880 of at least one of that customer's events rows
);

-- One row: how many events rows customer_event_blocks covers (the rows with a lower rowid).
CREATE TABLE IF NOT EXISTS customer_event_blocks_covered (
    events           BIGINT NOT NULL,        -- the events table's row count the map was last brought up to
    block_rows       BIGINT NOT NULL         -- rows per block (122880); a map of other blocks is made anew
);
