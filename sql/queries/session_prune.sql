-- Forget families none of whose tokens can be used any more (ended or
-- revoked, and the last access token expired) before the cutoff $1. Their
-- refresh token rows go with them (ON DELETE CASCADE).
DELETE FROM session_families
WHERE last_access_exp < $1
  AND (expires_at < $1 OR revoked_at < $1)
