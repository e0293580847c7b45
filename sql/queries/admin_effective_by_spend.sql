-- Principals for /effective?sort=spend_desc: settled spend in one period
-- ($5, current period starting $6), highest first, ties by sub in byte order.
-- Keyset cursor: rows after (spent $3, sub $4). $1, $2 as in
-- admin_effective_principals.sql.
WITH chosen AS (
    SELECT sub FROM principals WHERE $1::text[] IS NULL
    UNION
    SELECT scope_id FROM spend_counters WHERE $1::text[] IS NULL AND scope_type = 'user'
    UNION
    SELECT unnest($1::text[])
), ranked AS (
    SELECT c.sub, p.email, p.name, p.groups::text AS groups, coalesce(s.spent_micro, 0) AS spent_micro
    FROM chosen c
    LEFT JOIN principals p ON p.sub = c.sub
    LEFT JOIN spend_counters s
           ON s.scope_type = 'user' AND s.scope_id = c.sub AND s.period = $5 AND s.period_start = $6
    WHERE ($2::text IS NULL
           OR strpos(lower(c.sub), lower($2)) > 0
           OR strpos(lower(coalesce(p.email, '')), lower($2)) > 0
           OR strpos(lower(coalesce(p.name, '')), lower($2)) > 0)
)
SELECT sub, email, name, groups, spent_micro
FROM ranked
WHERE $3::bigint IS NULL OR spent_micro < $3 OR (spent_micro = $3 AND sub COLLATE "C" > $4)
ORDER BY spent_micro DESC, sub COLLATE "C"
LIMIT $7
