-- Families revoked after $1, for a revocation watcher (re)loading its set.
SELECT family_id, revoked_at
FROM session_families
WHERE revoked_at > $1
