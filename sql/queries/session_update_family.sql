-- Record a successful refresh: the identity as the IdP sees it now, the IdP's
-- refresh token when it rotated it ($5 NULL keeps the old one), and the
-- newest access token's expiry. Matches nothing once the family is revoked.
UPDATE session_families
SET email = $2,
    name = $3,
    groups = $4::text[],
    idp_refresh_token = coalesce($5, idp_refresh_token),
    last_refresh_at = $6,
    last_access_exp = greatest(last_access_exp, $7),
    refresh_count = refresh_count + 1
WHERE family_id = $1 AND revoked_at IS NULL
RETURNING family_id
