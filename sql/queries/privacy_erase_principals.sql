-- Erasure: a person's last-seen identities. $1 subjects, $2 email.
DELETE FROM principals WHERE sub = ANY($1::text[]) OR lower(email) = lower($2)
