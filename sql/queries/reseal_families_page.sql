-- One page of the sealed IdP refresh tokens of families that may still be
-- refreshed (not revoked, not past their maximum lifetime), in family id
-- order after $1 (NULL: from the start). $2 now, $3 page size.
SELECT family_id AS id, idp_refresh_token AS sealed
FROM session_families
WHERE idp_refresh_token IS NOT NULL AND revoked_at IS NULL AND expires_at > $2
  AND ($1::text IS NULL OR family_id > $1)
ORDER BY family_id
LIMIT $3
