-- Replace a cap's terms; id, created_at and created_by stay as they were.
UPDATE spend_limits
SET amount_cents = $2,
    pooled_limit_enabled = $3,
    pooled_monthly_credit_limit_cents = $4,
    updated_at = $5
WHERE id = $1
RETURNING id, scope_type, scope_id, period, amount_cents, currency, pooled_limit_enabled, pooled_monthly_credit_limit_cents, created_at, updated_at, created_by
