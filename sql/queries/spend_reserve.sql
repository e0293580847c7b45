-- $1 request id, $2 sub, $3 model, $4..$7 counter keys (types, ids, periods, starts),
-- $8 caps in µUSD parallel to the keys (NULL = uncapped), $9 amount, $10 now, $11 expires at.
SELECT admitted, c_type, c_id, c_period, c_start, c_spent, c_reserved, c_exhausted
FROM spend_reserve($1, $2, $3, $4::text[], $5::text[], $6::text[], $7::timestamptz[], $8::bigint[], $9, $10, $11)
