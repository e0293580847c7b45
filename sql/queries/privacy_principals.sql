-- A person's last-seen identities. $1 subjects, $2 email.
SELECT * FROM principals WHERE sub = ANY($1::text[]) OR lower(email) = lower($2) ORDER BY sub
