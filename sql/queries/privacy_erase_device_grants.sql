-- Erasure: a person's device sign-in grants. $1 subjects, $2 email.
DELETE FROM device_grants WHERE sub = ANY($1::text[]) OR lower(email) = lower($2)
