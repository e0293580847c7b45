-- One page of the sealed IdP refresh tokens of approved device grants whose
-- CLI has not collected its tokens yet (the token moves into a family then),
-- in key order after $1 (NULL: from the start). $2 now, $3 page size.
SELECT device_code_hash AS id, idp_refresh_token AS sealed
FROM device_grants
WHERE idp_refresh_token IS NOT NULL AND status = 'approved' AND expires_at > $2
  AND ($1::bytea IS NULL OR device_code_hash > $1)
ORDER BY device_code_hash
LIMIT $3
