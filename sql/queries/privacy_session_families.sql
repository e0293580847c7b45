-- A person's sign-in families, oldest first. $1 subjects, $2 email.
SELECT * FROM session_families WHERE sub = ANY($1::text[]) OR lower(email) = lower($2) ORDER BY created_at, family_id
