-- $1 request id, $2 caps in µUSD parallel to the reservation's stored keys, $3 amount, $4 now, $5 new expiry.
SELECT spend_top_up($1, $2::bigint[], $3, $4, $5)
