-- Last-seen identities, many at once: $1 subs, $2 emails, $3 names, $4 groups as JSON text, $5 now.
INSERT INTO principals AS p (sub, email, name, groups, updated_at)
SELECT u.sub, u.email, u.name, u.groups::jsonb, $5
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(sub, email, name, groups)
ON CONFLICT (sub) DO UPDATE
   SET email = EXCLUDED.email, name = EXCLUDED.name, groups = EXCLUDED.groups, updated_at = EXCLUDED.updated_at
