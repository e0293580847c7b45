-- Mutation trail, newest first, older than the id cursor when one is given.
-- $2 = page size + 1, so the caller knows exactly whether more follow.
SELECT id, at, actor, action, target, before::text AS before, after::text AS after, reason
FROM admin_audit
WHERE ($1::bigint IS NULL OR id < $1)
ORDER BY id DESC
LIMIT $2
