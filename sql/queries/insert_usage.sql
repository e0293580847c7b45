-- One statement per batch: each parameter is a column as an array, unnest
-- turns them back into rows. Conflicts are skipped so a batch retried after a
-- lost reply is harmless.
INSERT INTO usage_records (
    request_id, ts, sub, email, model, upstream, status,
    input_tokens, output_tokens, cache_creation_input_tokens,
    cache_creation_5m, cache_creation_1h, cache_read_input_tokens,
    estimated_output, ms_to_headers, ms_total, path, upstream_request_id
)
SELECT * FROM unnest(
    $1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], $7::integer[],
    $8::bigint[], $9::bigint[], $10::bigint[],
    $11::bigint[], $12::bigint[], $13::bigint[],
    $14::boolean[], $15::integer[], $16::integer[], $17::text[], $18::text[]
)
ON CONFLICT (request_id) DO NOTHING
