-- Erasure: a person's daily sums move to their pseudonym, added to any it already has
-- (the pseudonym is the same for the same subject, so a second erasure merges).
-- $1 subjects, $2 pseudonyms (parallel), $3 now. Returns the rows moved.
WITH moved AS (
    DELETE FROM usage_daily d USING unnest($1::text[], $2::text[]) AS m(sub, alias)
    WHERE d.sub = m.sub
    RETURNING d.*, m.alias
), merged AS (
    INSERT INTO usage_daily AS t (
        day, sub, model, upstream, requests, failed_requests, estimated_requests,
        input_tokens, output_tokens, cache_creation_input_tokens,
        cache_creation_5m, cache_creation_1h, cache_read_input_tokens, updated_at
    )
    SELECT day, alias, model, upstream, sum(requests), sum(failed_requests), sum(estimated_requests),
           sum(input_tokens), sum(output_tokens), sum(cache_creation_input_tokens),
           sum(cache_creation_5m), sum(cache_creation_1h), sum(cache_read_input_tokens), $3
    FROM moved
    GROUP BY day, alias, model, upstream
    ORDER BY day, alias, model, upstream  -- the sweep's key order (usage_rollup.sql)
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
)
SELECT count(*) FROM moved
