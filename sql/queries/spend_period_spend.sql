-- Settled spend per person for the given periods: $1 subs, $2 periods, $3 period starts (parallel to $2).
SELECT c.scope_id AS sub, c.period, c.spent_micro, c.reserved_micro
FROM spend_counters c
JOIN unnest($2::text[], $3::timestamptz[]) AS k(p, s) ON c.period = k.p AND c.period_start = k.s
WHERE c.scope_type = 'user' AND c.scope_id = ANY($1::text[])
