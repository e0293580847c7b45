-- Principals for /effective in ascending sub order (byte order, so pages are
-- stable whatever the database's collation), starting at sub >= $3.
-- $1: user_ids[] or NULL. Without it, everyone the gateway has seen: a
-- last-seen identity or a spend counter (there is no user directory).
-- $2: case-insensitive substring of sub, email or name, or NULL.
WITH chosen AS (
    SELECT sub FROM principals WHERE $1::text[] IS NULL
    UNION
    SELECT scope_id FROM spend_counters WHERE $1::text[] IS NULL AND scope_type = 'user'
    UNION
    SELECT unnest($1::text[])
)
SELECT c.sub, p.email, p.name, p.groups::text AS groups
FROM chosen c
LEFT JOIN principals p ON p.sub = c.sub
WHERE ($2::text IS NULL
       OR strpos(lower(c.sub), lower($2)) > 0
       OR strpos(lower(coalesce(p.email, '')), lower($2)) > 0
       OR strpos(lower(coalesce(p.name, '')), lower($2)) > 0)
  AND ($3::text IS NULL OR c.sub COLLATE "C" >= $3)
ORDER BY c.sub COLLATE "C"
LIMIT $4
