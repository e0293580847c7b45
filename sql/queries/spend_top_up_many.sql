-- Many top-ups in one round trip, parallel arrays: $1 request ids, $2 amounts in µUSD, $3 nows, $4 new
-- expiries; $5 first index and $6 count of each one's caps in $7 (µUSD, NULL = uncapped; parallel to its
-- reservation's stored keys). Returns 'granted', 'denied' or 'closed' parallel to $1.
SELECT spend_top_up_many($1::text[], $2::bigint[], $3::timestamptz[], $4::timestamptz[], $5::int[], $6::int[], $7::bigint[])
