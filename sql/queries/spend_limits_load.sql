SELECT id, scope_type, scope_id, period, amount_cents, pooled_limit_enabled,
       pooled_monthly_credit_limit_cents, currency, created_at, updated_at, created_by
FROM spend_limits
ORDER BY created_at, id
