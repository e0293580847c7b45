-- Recent output-token counts per person and model, oldest first, at most $2 per pair, since $1.
SELECT sub, model, output_tokens
FROM (
    SELECT sub, model, output_tokens, ts,
           row_number() OVER (PARTITION BY sub, model ORDER BY ts DESC) AS recent
    FROM usage_records
    WHERE ts >= $1 AND path = '/v1/messages' AND status = 200 AND model IS NOT NULL
) r
WHERE recent <= $2
ORDER BY ts
