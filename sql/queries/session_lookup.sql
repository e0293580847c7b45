-- Everything needed to decide what a refresh token presentation means.
SELECT t.family_id, t.claimed_at, t.rotated_at, t.successor,
       f.sub, f.email, f.expires_at, f.revoked_at
FROM session_refresh_tokens AS t
JOIN session_families AS f USING (family_id)
WHERE t.token_hash = $1
