-- Move one batch of raw usage rows older than $1 (midnight UTC) into usage_daily:
-- at most $2 rows, oldest first, deleted and added to their day's sums in one
-- statement. SKIP LOCKED lets every replica sweep at once: each takes rows no
-- other sweep holds, and a row deleted is added exactly once. Sums are added
-- to what the day already has, so a row that arrives late for a day rolled up
-- before is counted on the next sweep. $3 now. Returns the rows moved.
WITH doomed AS (
    SELECT request_id FROM usage_records
    WHERE ts < $1
    ORDER BY ts
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM usage_records u USING doomed d
    WHERE u.request_id = d.request_id
    RETURNING u.*
), rolled AS (
    INSERT INTO usage_daily AS t (
        day, sub, model, upstream, requests, failed_requests, estimated_requests,
        input_tokens, output_tokens, cache_creation_input_tokens,
        cache_creation_5m, cache_creation_1h, cache_read_input_tokens, updated_at
    )
    SELECT (g.ts AT TIME ZONE 'UTC')::date, g.sub, coalesce(g.model, ''), coalesce(g.upstream, ''),
           count(*), count(*) FILTER (WHERE g.status NOT BETWEEN 200 AND 299), count(*) FILTER (WHERE g.estimated_output),
           sum(g.input_tokens), sum(g.output_tokens), sum(g.cache_creation_input_tokens),
           sum(g.cache_creation_5m), sum(g.cache_creation_1h), sum(g.cache_read_input_tokens), $3
    FROM gone g
    GROUP BY 1, 2, 3, 4
    -- Keys in one order, so two sweeps adding to the same days wait for each other instead of deadlocking.
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (day, sub, model, upstream) DO UPDATE SET
        requests = t.requests + EXCLUDED.requests,
        failed_requests = t.failed_requests + EXCLUDED.failed_requests,
        estimated_requests = t.estimated_requests + EXCLUDED.estimated_requests,
        input_tokens = t.input_tokens + EXCLUDED.input_tokens,
        output_tokens = t.output_tokens + EXCLUDED.output_tokens,
        cache_creation_input_tokens = t.cache_creation_input_tokens + EXCLUDED.cache_creation_input_tokens,
        cache_creation_5m = t.cache_creation_5m + EXCLUDED.cache_creation_5m,
        cache_creation_1h = t.cache_creation_1h + EXCLUDED.cache_creation_1h,
        cache_read_input_tokens = t.cache_read_input_tokens + EXCLUDED.cache_read_input_tokens,
        updated_at = EXCLUDED.updated_at
    RETURNING 1
)
SELECT count(*) FROM gone
