-- A person's device sign-in grants. $1 subjects, $2 email.
SELECT * FROM device_grants WHERE sub = ANY($1::text[]) OR lower(email) = lower($2) ORDER BY created_at
