-- Every stored family of one person (email in any letter case), newest first.
SELECT family_id, sub, email, name, groups, client_ip, created_at, expires_at,
       last_refresh_at, last_access_exp, refresh_count,
       idp_refresh_token IS NOT NULL AS refreshable, revoked_at, revoke_reason
FROM session_families
WHERE lower(email) = lower($1)
ORDER BY created_at DESC
