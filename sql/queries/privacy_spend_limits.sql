-- Spend limits on a person, or created by them as an admin signed in through OIDC.
-- $1 subjects, $2 the same as actors ('oidc:' || sub).
SELECT * FROM spend_limits
WHERE (scope_type = 'user' AND scope_id = ANY($1::text[])) OR created_by = ANY($2::text[])
ORDER BY created_at, id
