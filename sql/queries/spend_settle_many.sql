-- Many settlements in one round trip, parallel arrays: $1 request ids, $2 subs, $3 models, $4 actual costs
-- in µUSD, $5 nows; $6 first index and $7 count of each one's counter keys in $8..$11 (types, ids,
-- periods, starts; used only where no reservation exists); $12 the lease each was admitted against
-- (NULL: none) and $13 what its settlement moves out of that lease. Returns the outcomes parallel to $1.
SELECT spend_settle_many($1::text[], $2::text[], $3::text[], $4::bigint[], $5::timestamptz[],
                         $6::int[], $7::int[], $8::text[], $9::text[], $10::text[], $11::timestamptz[],
                         $12::text[], $13::bigint[])
