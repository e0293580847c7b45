-- Whether anyone has recorded spend here: load_test_mode refuses such a database,
-- so a load test never mixes its requests into real spend. Tokens count as well as
-- settled money (a gateway without admin: keeps only tokens), in raw usage rows and
-- in the daily rollups the retention sweep moves old rows into.
SELECT EXISTS (SELECT 1 FROM spend_counters WHERE spent_micro > 0)
    OR EXISTS (
        SELECT 1 FROM usage_records
        WHERE input_tokens > 0 OR output_tokens > 0
           OR cache_creation_input_tokens > 0 OR cache_read_input_tokens > 0
    )
    OR EXISTS (
        SELECT 1 FROM usage_daily
        WHERE input_tokens > 0 OR output_tokens > 0
           OR cache_creation_input_tokens > 0 OR cache_read_input_tokens > 0
    )
