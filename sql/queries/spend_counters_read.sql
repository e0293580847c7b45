-- Counters by key, for /api/oauth/usage and the admin API; missing counters simply return no row.
SELECT c.scope_type, c.scope_id, c.period, c.period_start, c.spent_micro, c.reserved_micro, c.exhausted_cap_micro
FROM spend_counters c
JOIN unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[]) AS k(t, i, p, s)
  ON c.scope_type = k.t AND c.scope_id = k.i AND c.period = k.p AND c.period_start = k.s
