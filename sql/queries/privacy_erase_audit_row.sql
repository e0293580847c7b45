-- Erasure: one audit entry, rewritten with the person's identifiers replaced by pseudonyms.
-- $1 id, $2 actor, $3 target, $4 before, $5 after (JSON text), $6 reason.
UPDATE admin_audit SET actor = $2, target = $3, before = $4::jsonb, after = $5::jsonb, reason = $6 WHERE id = $1
