-- One row per relayed request, written in batches by gateway/recorder.py.
-- request_id is the gateway's own id for the request, so a batch retried after
-- a timeout cannot insert a row twice (the insert skips conflicts).
-- Later tables (sign-in device codes, sessions, spend counters) arrive in
-- their own migrations; this file never changes once released.
CREATE TABLE usage_records (
    request_id                  text        PRIMARY KEY,
    ts                          timestamptz NOT NULL,
    sub                         text        NOT NULL,
    email                       text,
    model                       text,
    upstream                    text,
    status                      integer     NOT NULL,
    input_tokens                bigint      NOT NULL DEFAULT 0,
    output_tokens               bigint      NOT NULL DEFAULT 0,
    cache_creation_input_tokens bigint      NOT NULL DEFAULT 0,
    cache_creation_5m           bigint      NOT NULL DEFAULT 0,
    cache_creation_1h           bigint      NOT NULL DEFAULT 0,
    cache_read_input_tokens     bigint      NOT NULL DEFAULT 0,
    -- true when output_tokens was estimated because the stream ended without a usage report
    estimated_output            boolean     NOT NULL DEFAULT false,
    ms_to_headers               integer,
    ms_total                    integer,
    path                        text        NOT NULL,
    upstream_request_id         text
);

-- Per-person usage over a time range (reports, spend periods).
CREATE INDEX usage_records_sub_ts ON usage_records (sub, ts);
