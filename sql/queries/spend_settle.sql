-- $1 request id, $2 sub, $3 model, $4..$7 counter keys (used only when no reservation exists),
-- $8 actual cost in µUSD, $9 now.
SELECT spend_settle($1, $2, $3, $4::text[], $5::text[], $6::text[], $7::timestamptz[], $8, $9)
