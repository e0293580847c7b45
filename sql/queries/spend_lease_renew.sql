-- A replica's leases, parallel arrays: $1 lease ids, $2 what their running requests hold (µUSD), $3 what
-- each should shrink to (NULL: keep all); $4 now, $5 the new expiry. One row per counter of each lease, in
-- $1 order: its 1-based position, whether it is still open, the counter (NULLs when not open).
SELECT l_ord, l_open, c_type, c_id, c_period, c_start, c_spent, c_reserved, c_exhausted
FROM spend_lease_renew($1::text[], $2::bigint[], $3::bigint[], $4::timestamptz, $5::timestamptz)
