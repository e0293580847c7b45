-- Create a cap for a (scope, period) that has none. Returns nothing when one
-- exists (or a concurrent transaction just created it: ON CONFLICT waits for
-- that transaction to finish), and the caller then updates it instead.
INSERT INTO spend_limits (id, scope_type, scope_id, period, amount_cents, currency, pooled_limit_enabled, pooled_monthly_credit_limit_cents, created_at, updated_at, created_by)
VALUES ($1, $2, $3, $4, $5, 'USD', $6, $7, $8, $8, $9)
ON CONFLICT (scope_type, scope_id, period) DO NOTHING
RETURNING id, scope_type, scope_id, period, amount_cents, currency, pooled_limit_enabled, pooled_monthly_credit_limit_cents, created_at, updated_at, created_by
