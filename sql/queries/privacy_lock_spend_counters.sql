-- Erasure: lock a person's counters (and their pseudonym's, from an earlier erasure)
-- in spend_lock_counters' fixed order, before moving them. $1 subjects and pseudonyms.
SELECT 1 FROM spend_counters c
WHERE c.scope_type = 'user' AND c.scope_id = ANY($1::text[])
ORDER BY c.scope_type COLLATE "C", c.scope_id COLLATE "C", c.period COLLATE "C", c.period_start
FOR UPDATE
