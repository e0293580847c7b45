-- Many admissions in one round trip, parallel arrays: $1 request ids, $2 subs, $3 models, $4 amounts in
-- µUSD, $5 nows, $6 expiries; $7 first index and $8 count of each one's counter keys in $9..$12 (types,
-- ids, periods, starts), with $13 the caps in µUSD parallel to the keys (NULL = uncapped). One row per
-- counter of each request, in batch order: its 1-based position, its verdict, the counter after it.
SELECT r_ord, r_admitted, c_type, c_id, c_period, c_start, c_spent, c_reserved, c_exhausted
FROM spend_reserve_many($1::text[], $2::text[], $3::text[], $4::bigint[], $5::timestamptz[], $6::timestamptz[],
                        $7::int[], $8::int[], $9::text[], $10::text[], $11::text[], $12::timestamptz[],
                        $13::bigint[])
