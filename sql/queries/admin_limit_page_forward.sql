-- One page of caps in creation order, after the (created_at, id) cursor when
-- one is given. $1 scope_type filter or NULL; $4 = page size + 1, so the
-- caller knows whether more follow.
SELECT id, scope_type, scope_id, period, amount_cents, currency, pooled_limit_enabled, pooled_monthly_credit_limit_cents, created_at, updated_at, created_by
FROM spend_limits
WHERE ($1::text IS NULL OR scope_type = $1)
  AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3))
ORDER BY created_at, id
LIMIT $4
