-- Tells every replica's limit cache to reload; delivered only if the
-- surrounding transaction commits.
SELECT pg_notify('gatehouse_spend_limits', $1)
