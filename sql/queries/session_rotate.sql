-- Retire the presented token in favour of its successor, provided this caller
-- still holds the claim (it may have been taken over after going stale).
-- $1 token hash, $2 claim id, $3 now, $4 sealed successor pair.
UPDATE session_refresh_tokens
SET rotated_at = $3, successor = $4, claim_id = NULL, claimed_at = NULL
WHERE token_hash = $1 AND claim_id = $2 AND rotated_at IS NULL
RETURNING family_id
