-- The current cap of a (scope, period), locked so its "before" snapshot in the
-- audit trail is exactly what the update below replaces.
SELECT id, scope_type, scope_id, period, amount_cents, currency, pooled_limit_enabled, pooled_monthly_credit_limit_cents, created_at, updated_at, created_by
FROM spend_limits
WHERE scope_type = $1 AND scope_id = $2 AND period = $3
FOR UPDATE
