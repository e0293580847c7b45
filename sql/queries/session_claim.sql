-- Take the right to refresh with this token: it must be current (not yet
-- rotated), not held by a live claim, and its family alive. Two replicas
-- racing here serialize on the row lock; the second re-checks the WHERE clause
-- against the first's committed claim and matches nothing.
-- $1 token hash, $2 claim id, $3 now, $4 claims taken before this are abandoned.
UPDATE session_refresh_tokens AS t
SET claim_id = $2, claimed_at = $3
FROM session_families AS f
WHERE t.token_hash = $1
  AND f.family_id = t.family_id
  AND t.rotated_at IS NULL
  AND (t.claimed_at IS NULL OR t.claimed_at < $4)
  AND f.revoked_at IS NULL
  AND f.expires_at > $3
RETURNING f.family_id, f.sub, f.email, f.name, f.groups, f.expires_at, f.idp_refresh_token
