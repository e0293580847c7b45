INSERT INTO admin_audit (at, actor, action, target, before, after, reason)
VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7)
RETURNING id
