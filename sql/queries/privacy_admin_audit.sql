-- Audit entries that mention a person anywhere (actor, target, snapshots, reason).
-- $1 ILIKE patterns ('%' || escaped term || '%'), one per subject and email.
SELECT id, at, actor, action, target, before::text AS before, after::text AS after, reason
FROM admin_audit
WHERE actor ILIKE ANY($1::text[]) OR target ILIKE ANY($1::text[]) OR reason ILIKE ANY($1::text[])
   OR before::text ILIKE ANY($1::text[]) OR after::text ILIKE ANY($1::text[])
ORDER BY id
