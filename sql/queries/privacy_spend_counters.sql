-- A person's spend counters (group pools are the group's, not theirs). $1 subjects.
SELECT * FROM spend_counters WHERE scope_type = 'user' AND scope_id = ANY($1::text[])
ORDER BY period, period_start, scope_id
