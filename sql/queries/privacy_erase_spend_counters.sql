-- Erasure: a person's spend counters move to their pseudonym, added to any it already
-- has, so every total over counters stays the same. Group pool counters are the
-- group's and stay as they are. Run after privacy_lock_spend_counters.
-- $1 subjects, $2 pseudonyms (parallel), $3 now. Returns the rows moved.
WITH moved AS (
    DELETE FROM spend_counters c USING unnest($1::text[], $2::text[]) AS m(sub, alias)
    WHERE c.scope_type = 'user' AND c.scope_id = m.sub
    RETURNING c.*, m.alias
), merged AS (
    INSERT INTO spend_counters AS t
        (scope_type, scope_id, period, period_start, spent_micro, reserved_micro, exhausted_cap_micro, updated_at)
    SELECT 'user', alias, period, period_start, sum(spent_micro), sum(reserved_micro), max(exhausted_cap_micro), $3
    FROM moved
    GROUP BY alias, period, period_start
    ON CONFLICT (scope_type, scope_id, period, period_start) DO UPDATE SET
        spent_micro = t.spent_micro + EXCLUDED.spent_micro,
        reserved_micro = t.reserved_micro + EXCLUDED.reserved_micro,
        exhausted_cap_micro = coalesce(t.exhausted_cap_micro, EXCLUDED.exhausted_cap_micro),
        updated_at = EXCLUDED.updated_at
)
SELECT count(*) FROM moved
