-- A successor pair is only kept for the reuse window; after it, a repeated
-- presentation revokes the family, so the sealed pair has no further use.
UPDATE session_refresh_tokens
SET successor = NULL
WHERE family_id = $1 AND successor IS NOT NULL AND rotated_at < $2
