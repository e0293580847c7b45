-- A new family from a completed sign-in.
INSERT INTO session_families (
    family_id, sub, email, name, groups, client_ip,
    created_at, expires_at, last_access_exp, idp_refresh_token
)
VALUES ($1, $2, $3, $4, $5::text[], $6, $7, $8, $9, $10)
