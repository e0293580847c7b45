-- The page just before the (created_at, id) cursor, read newest-first; the
-- caller reverses it back into creation order. $4 = page size + 1.
SELECT id, scope_type, scope_id, period, amount_cents, currency, pooled_limit_enabled, pooled_monthly_credit_limit_cents, created_at, updated_at, created_by
FROM spend_limits
WHERE ($1::text IS NULL OR scope_type = $1)
  AND (created_at, id) < ($2, $3)
ORDER BY created_at DESC, id DESC
LIMIT $4
