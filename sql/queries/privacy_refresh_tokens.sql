-- The refresh tokens (hashes only) of some families. $1 family ids.
SELECT token_hash, family_id, issued_at, claimed_at, rotated_at, successor IS NOT NULL AS has_successor
FROM session_refresh_tokens WHERE family_id = ANY($1::text[]) ORDER BY issued_at, token_hash
