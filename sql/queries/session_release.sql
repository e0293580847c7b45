-- Give a claim back after a retryable failure, so the next attempt need not
-- wait for the claim to go stale.
UPDATE session_refresh_tokens
SET claim_id = NULL, claimed_at = NULL
WHERE token_hash = $1 AND claim_id = $2 AND rotated_at IS NULL
