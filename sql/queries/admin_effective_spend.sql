-- Settled spend of the given principals in the given current periods
-- (parallel arrays $2 period, $3 period_start).
SELECT s.scope_id AS sub, s.period, s.spent_micro
FROM spend_counters s
JOIN unnest($2::text[], $3::timestamptz[]) AS k(period, period_start)
  ON s.period = k.period AND s.period_start = k.period_start
WHERE s.scope_type = 'user' AND s.scope_id = ANY($1::text[])
