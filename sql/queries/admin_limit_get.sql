SELECT id, scope_type, scope_id, period, amount_cents, currency, pooled_limit_enabled, pooled_monthly_credit_limit_cents, created_at, updated_at, created_by FROM spend_limits WHERE id = $1
