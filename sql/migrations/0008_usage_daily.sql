-- Daily rollups of usage_records, so raw rows (one per request, with the
-- person's email) can be deleted after gatehouse.retention.usage_records_days
-- while spend history stays.
--
-- The retention sweep moves raw rows in: one statement deletes a batch of old
-- rows and adds their sums here (sql/queries/usage_rollup.sql), so a row is
-- counted exactly once however many replicas sweep at the same time, and a row
-- written late for a day already rolled up is added on the next sweep.
-- usage_records holds no prices, so neither does this table: cost follows
-- from the token sums and the price table, and settled spend per person and
-- period is in spend_counters.
--
-- Keyed by the OIDC subject only (never the email). `gatehouse privacy erase`
-- moves a person's rows to their pseudonym ('erased:…').

CREATE TABLE usage_daily (
    day                         date        NOT NULL,  -- UTC day of the requests
    sub                         text        NOT NULL,
    model                       text        NOT NULL DEFAULT '',  -- '' where usage_records had NULL
    upstream                    text        NOT NULL DEFAULT '',
    requests                    bigint      NOT NULL DEFAULT 0,
    failed_requests             bigint      NOT NULL DEFAULT 0,   -- status outside 2xx
    estimated_requests          bigint      NOT NULL DEFAULT 0,   -- output_tokens estimated (no usage report)
    input_tokens                bigint      NOT NULL DEFAULT 0,
    output_tokens               bigint      NOT NULL DEFAULT 0,
    cache_creation_input_tokens bigint      NOT NULL DEFAULT 0,
    cache_creation_5m           bigint      NOT NULL DEFAULT 0,
    cache_creation_1h           bigint      NOT NULL DEFAULT 0,
    cache_read_input_tokens     bigint      NOT NULL DEFAULT 0,
    updated_at                  timestamptz NOT NULL,
    PRIMARY KEY (day, sub, model, upstream)
);

-- Export and erasure find one person's rows.
CREATE INDEX usage_daily_sub ON usage_daily (sub);
-- Pruning by age, and the sweep picking the oldest raw rows first.
CREATE INDEX usage_daily_day ON usage_daily (day);
CREATE INDEX usage_records_ts ON usage_records (ts);
