-- Rollup days before $1 (gatehouse.retention.usage_daily_days, when set).
DELETE FROM usage_daily WHERE day < $1
